"""The front door for models and weights: any model reference becomes the model and what it expects.

``load_model`` takes a registered name, a torchvision or timm name, a training checkpoint or a release
(``.pth``/``.safetensors`` that carry their configuration), an official ``.pth`` (recognised by its published
file name), or a name with a bare weight file, and returns a ``LoadedModel``: the model in eval mode and its
``DataInfo`` (classes, channels, input size, mean/std), a label and where it came from. Every tool (eval,
predict, cam, erf, bench, export, train's resume through ``load_weights``) gets its models here; files are read
by ``scnet.files`` and weights enter a model only through ``models.weights.load_weights``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch.nn as nn

from .data import IMAGENET_CROP_PCT, DataInfo
from .files import HUB_PREFIXES, is_training_checkpoint, read_checkpoint
from .models import registry
from .models.weights import IMAGENET_MEAN, IMAGENET_STD, PRETRAINED, load_pretrained, load_weights, state_dict_of

__all__ = ["BareWeightsError", "LoadedModel", "load_model", "model_from_config", "data_info_of"]


class BareWeightsError(ValueError):
    """A weight file without the model's description, loaded without a model name."""


@dataclass
class LoadedModel:
    """A model (eval mode) with the description of its inputs and classes, a label for reports and its source."""

    model: nn.Module
    info: DataInfo
    label: str  # e.g. "scnet_demo (trained)", "resnet50 (weights)", "scnet50 (init)"
    source: str  # the file it was read from, "pretrained", or "init"
    checkpoint: Optional[dict[str, Any]] = None  # a training checkpoint as read, for callers that want its history
    arch: Optional[str] = None  # the registered (or torchvision/timm) name it was built from
    model_args: dict[str, Any] = field(default_factory=dict)  # the builder's arguments besides num_classes: rebuilds it


def model_from_config(config: dict[str, Any], info: DataInfo) -> nn.Module:
    """The model a training configuration describes, shaped for its dataset (classes, channels), random weights."""
    tuning = {k: config[k] for k, default in (("frozen_stages", -1), ("norm_eval", False)) if config.get(k, default) != default}
    return registry.create_model(config["model"], num_classes=info.num_classes, in_chans=info.in_chans,
                                 stem_type=config.get("stem_type"), norm_layer=config.get("norm_layer"), **tuning)


def data_info_of(model: nn.Module) -> DataInfo:
    """An ImageNet-style description of a model built by name: its pretrained config's size and mean/std; readable
    class names ("goldfish", the first of each class's synonyms) for 1000 classes."""
    from timm.data import ImageNetInfo

    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    classes = getattr(model, "num_classes", None) or [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features  # torchvision's have no attribute
    names = tuple(cfg.get("label_names") or ())  # a model from timm's Hub layout names its classes
    if len(names) != classes:
        names = tuple(d.split(",")[0] for d in ImageNetInfo().label_descriptions()) if classes == 1000 else tuple(str(i) for i in range(classes))
    in_chans = int(getattr(model, "in_chans", 3))
    mean, std = (channel_stats(cfg.get(key, default), in_chans) for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)))
    return DataInfo("imagenet", classes, in_chans, size, mean, std, names, crop_pct=float(cfg.get("crop_pct", IMAGENET_CROP_PCT)),
                    interpolation=str(cfg.get("interpolation") or "bilinear"))


def channel_stats(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """RGB normalisation statistics for a model of ``in_chans`` channels: their mean for one channel (a grey
    image's value is about the mean of its RGB ones), repeated cyclically for more (as timm adapts a first
    convolution's weights to other channel counts)."""
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if in_chans == 1:
        return (sum(values) / len(values),)
    return tuple(values[i % len(values)] for i in range(in_chans))


def _official_arch(path: Path) -> Optional[str]:
    """The model whose published file this is, by its name (``scnet50-dc6a7e87.pth``), or None."""
    return next((name for name, spec in PRETRAINED.items() if spec.filename == path.name), None)


def _trained(path: str, state: dict[str, Any], name: Optional[str], use_ema: bool) -> LoadedModel:
    """A training checkpoint or a release of one: the model its configuration names, its weights loaded."""
    arch = state["config"]["model"]
    if name and name != arch:
        raise ValueError(f"{path} holds {arch}, not {name}")
    key = "model_ema" if use_ema else "model"
    if not isinstance(state.get(key), dict):
        raise ValueError(f"{path} has no {'EMA ' if use_ema else ''}weights (no '{key}' entry)")
    info = DataInfo.from_dict(state["data_info"])
    model = model_from_config(state["config"], info)
    load_weights(model, state[key], path, classifier=None, name=f"{arch} on {info.name}")
    args = {k: state["config"][k] for k in ("stem_type", "norm_layer") if state["config"].get(k)}
    return LoadedModel(model.eval(), info, f"{arch} (trained)", path, state, arch, dict(args, in_chans=info.in_chans))


def load_model(name: Optional[str] = None, file: Optional[str] = None, *, pretrained: bool = False, use_ema: bool = False,
               data_info: Optional[DataInfo] = None, **kwargs: Any) -> LoadedModel:
    """Any model reference as a model in eval mode with its description (see the module's docstring).

    ``name`` alone builds that model (ours, torchvision's or timm's; ``local-dir:PATH`` or ``hf-hub:ORG/NAME``, a
    model in timm's Hub layout with its weights and description): with ``pretrained``, our published weights
    (hash-checked download); with ``data_info``, shaped for that dataset (channels, classes) and described by it.
    ``file`` is a training checkpoint or release (``name``, if given, must match it), an official ``.pth``
    (``name`` may be left out), or bare weights for ``name``. ``use_ema`` takes a checkpoint's EMA weights.
    Other keyword arguments go to the builder (e.g. ``num_classes``, ``in_chans``, ``stem_type``).

    Raises ``BareWeightsError`` for bare weights without a model name, ``ValueError`` for an unknown name, a file of
    another model or weights that do not fit, ``FileNotFoundError`` for a missing file.
    """
    if file is not None:
        state = read_checkpoint(file)  # the one read of the file
        if is_training_checkpoint(state):
            return _trained(str(file), state, name, use_ema)
        name = name or _official_arch(Path(file))
        if not name:
            raise BareWeightsError(f"{file} holds bare weights: give the model's name too")
    if not name:
        raise ValueError("give a model name or a checkpoint")
    if data_info is not None:
        kwargs = dict(kwargs, in_chans=data_info.in_chans, num_classes=data_info.num_classes)
    model = registry.create_any_model(name, **kwargs)
    if pretrained:
        load_pretrained(model, name)
    if file is not None:
        ours = name if name in registry.list_models() else None  # our files name their architecture: checked
        load_weights(model, state_dict_of(state, file, ours), str(file))
    hub = name.startswith(HUB_PREFIXES)
    label = f"{name} ({'weights' if file or hub else 'pretrained' if pretrained else 'init'})"
    info = data_info if data_info is not None else data_info_of(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture", name) if hub else name
    args = {k: v for k, v in kwargs.items() if v is not None and k != "num_classes"}
    if hub or "in_chans" not in args:
        args["in_chans"] = info.in_chans
    source = str(file) if file else name if hub else "pretrained" if pretrained else "init"
    return LoadedModel(model.eval(), info, label, source, None, arch, args)
