"""``scnet cam`` and ``scnet erf``: load an SC model and its baseline, compute, write the figures and tables."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.spec import ModelSpec
from ..errors import SettingError
from .erf import FeatureMap, erf, erf_area_ratios, stage_names

__all__ = ["ErfOptions", "run_cam", "run_erf"]


def _load(name: Optional[str], checkpoint: Optional[str], data_info: Optional[ModelSpec] = None) -> tuple[nn.Module, ModelSpec, str]:
    """(model in eval mode, its inputs, a label) through the front door. ``data_info`` shapes a model built from a
    name alone (channels, classes) to a dataset, for measuring it at initialisation on that dataset's images."""
    from ..load import load_model

    loaded = load_model(name, checkpoint, data_info=None if checkpoint else data_info)
    return loaded.model, loaded.info, loaded.label


ModelRef = tuple[Optional[str], Optional[str]]  # (name, checkpoint): either may be None, not both


def _given(models: Sequence[ModelRef]) -> list[ModelRef]:
    return [(name, ck) for name, ck in models if name is not None or ck is not None]


def run_cam(images: Sequence[str], models: Sequence[ModelRef], layer: Optional[str] = None, class_index: Optional[int] = None,
            out: Path = Path("runs/cam"), command: str = "") -> dict[str, Any]:
    """Grad-CAM of every image for each model (the SC model, then its baseline); figures and cam.json in ``out``."""
    from ..predict import load_image
    from .cam import gradcam
    from .report import display_image, write_cam_figures

    if not images:
        raise ValueError("give at least one image file")
    columns = []
    for name, ck in _given(models):
        net, info, label = _load(name, ck)
        label = label if all(c["label"] != label for c in columns) else f"{label} (baseline)"
        x = torch.stack([load_image(p, info) for p in images])  # (N, C, S, S)
        result = gradcam(net, x, layer, class_index)
        columns.append(dict(label=label, images=[display_image(t, info) for t in x], result=result, classes=info.classes))
    paths = write_cam_figures(out, [str(p) for p in images], columns)
    summary = dict(command=command, layer=columns[0]["result"].layer, images=[
        dict(image=str(p), models=[dict(model=c["label"], cls=c["classes"][c["result"].classes[i]], prob=c["result"].probs[i],
                                        # share of the image where the map is at least half its peak: how much it covers
                                        coverage=float((c["result"].cams[i] >= 0.5).mean())) for c in columns])
        for i, p in enumerate(images)])
    (out / "cam.json").write_text(json.dumps(summary, indent=2))
    return dict(summary, files=[str(p) for p in paths])


def _dataset_inputs(data: str, data_dir: Optional[str], count: int, size: Optional[int]) -> tuple[list[torch.Tensor], ModelSpec]:
    """The first ``count`` validation images of a dataset, normalised, optionally resized to ``size``."""
    from ..data import build_datasets

    _, val, info = build_datasets(data, data_dir, 1, count)
    images = [val[i][0] for i in range(min(count, len(val)))]  # (C, H, W) each
    if size is not None and size != images[0].shape[-1]:
        images = [F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0] for x in images]
    return images, info


@dataclass(frozen=True)
class ErfOptions:
    """What ``run_erf`` averages over and measures (the ``scnet erf`` flags)."""

    data: Optional[str] = None  # a dataset's validation images; None: standard-normal noise
    data_dir: Optional[str] = None
    num_samples: int = 64
    input_size: Optional[int] = None  # square side; None: the dataset's or the model's
    stages: Optional[Sequence[str]] = None  # None: every stage
    seed: int = 0  # of the noise and of the initial weights of a model built from its name
    device: str = "cpu"
    inits: int = 1  # average a model built from its name over this many initialisations


def run_erf(models: Sequence[ModelRef], options: ErfOptions = ErfOptions(), out: Path = Path("runs/erf"), command: str = "") -> dict[str, Any]:
    """ERFs of every stage of each model (the SC model, then its baseline); erf.png/json/md/npz in ``out``.

    A model built from its name alone is measured at initialisation: its weights come from ``seed`` (and with
    ``inits`` > 1 the map is averaged over that many initialisations, seeds ``seed`` .. ``seed + inits - 1``),
    since one random draw of weights moves the tails of the field noticeably.
    """
    from .report import write_erf_report

    o = options
    if o.inits < 1:
        raise ValueError(f"inits must be >= 1, got {o.inits}")
    inputs, data_info = _dataset_inputs(o.data, o.data_dir, o.num_samples, o.input_size) if o.data else (None, None)
    maps: dict[str, dict[str, Any]] = {}
    ratios: dict[str, dict[str, Any]] = {}
    description = ""
    for name, ck in _given(models):
        label, summed, side = _erf_of(name, ck, o, inputs, data_info)
        description = (f"{len(inputs)} {data_info.name} validation images" if inputs else f"{o.num_samples} standard-normal images") \
            + f" at {side}x{side} px" + (f"; models at initialisation averaged over {o.inits} seeds" if o.inits > 1 else "")
        label = label if label not in maps else f"{label} (baseline)"
        if maps and list(summed) != list(next(iter(maps.values()))):
            raise SettingError(f"{label} has stages {list(summed)}, the first model others; name common ones with {{stages}}", "stages")
        maps[label] = summed
        ratios[label] = {stage: erf_area_ratios(m) for stage, m in summed.items()}
    if not maps:
        raise ValueError("give a model name or a checkpoint")
    write_erf_report(out, maps, ratios, description, command)
    return dict(inputs=description, ratios=ratios)


def _erf_of(name: Optional[str], ck: Optional[str], o: ErfOptions, inputs: Optional[list[torch.Tensor]],
            data_info: Optional[ModelSpec]) -> tuple[str, dict[str, Any], int]:
    """(label, stage -> ERF map averaged over the initialisations, input side) of one model."""
    draws = 1 if ck else o.inits
    summed: dict[str, Any] = {}
    for draw in range(draws):
        torch.manual_seed(o.seed + draw)  # the initial weights of a model built from its name
        net, info, label = _load(name, ck, data_info)
        net = net.to(o.device).eval()
        if data_info is not None and info.in_chans != data_info.in_chans:
            raise ValueError(f"{label} takes {info.in_chans} channels but {data_info.name} images have {data_info.in_chans}")
        side = o.input_size or (inputs[0].shape[-1] if inputs else info.image_size)
        for stage in list(o.stages or stage_names(net)):
            m = erf(FeatureMap(net, stage), (info.in_chans, side, side), o.num_samples, inputs, o.seed)
            summed[stage] = summed.get(stage, 0) + m / draws
    return label, summed, side
