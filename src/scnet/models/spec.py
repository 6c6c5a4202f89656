"""What a model is and what it expects, in one frozen type: ``ModelSpec``.

torchvision keeps one ``Weights(url, transforms, meta)`` object per set of weights; this is ours, and it describes
every model the library handles, not only published ones: the official weights (``weights.PRETRAINED``), a dataset's
description (what a model trained on it expects: ``data.build_datasets``), a training checkpoint or release (its
``data_info`` entry), a model in timm's Hub layout (its ``pretrained_cfg``). Everything else is derived from it in
this module, once: the evaluation transform (``transform``), timm's ``pretrained_cfg`` (``timm_cfg``), the metadata of
a released file (``metadata``) and the dict a checkpoint stores (``to_dict``/``from_dict``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN, IMAGENET_DEFAULT_STD as IMAGENET_STD

__all__ = ["ModelSpec", "DataInfo", "IMAGENET_CROP_PCT", "IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS",
           "channel_stats", "eval_transform", "spec_of"]

IMAGENET_CROP_PCT = 0.875  # resize to 256, crop 224: the evaluation of the ImageNet literature (and the paper's)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class ModelSpec:
    """A model's inputs, classes, architecture and, for published weights, where they live and what they scored.

    The first fields describe the data (a dataset's description is the spec of a model trained on it, with no
    architecture yet); ``crop_pct`` is the share of the resized image the centre crop keeps (timm's): an image's
    short side is resized to ``image_size / crop_pct``, then cropped to ``image_size``: 0.875 for ImageNet-style
    photographs, 1.0 for sets whose images are already the model's size. ``classes`` may be empty for ImageNet-1k
    (the names are timm's, read when asked for: ``labels``). ``sha256`` is the whole digest or a prefix of at least 8
    digits (the published files carry one in their names, torch.hub's convention); ``top1``/``top5`` are the
    authors' reported ImageNet accuracies, not measured here.
    """

    name: str  # the data: "imagenet", "fashion_mnist", "imagefolder", ...
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    skipped_images: int = 0  # unreadable image files left out of the data (ImageFolder with bad_images="skip")
    crop_pct: float = 1.0
    interpolation: str = "bilinear"  # of that resize: "bilinear" (the official evaluation's), "bicubic" or "nearest"
    arch: str = ""  # the registered architecture, once a model is built for the data
    model_args: Mapping[str, Any] = field(default_factory=dict)  # its builder's arguments besides classes and channels
    url: str = ""
    sha256: str = ""
    top1: Optional[float] = None
    top5: Optional[float] = None
    origin: str = ""

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")

    @property
    def resize_side(self) -> int:
        """The short side an image is resized to before the centre crop: ``image_size / crop_pct``."""
        return int(self.image_size / self.crop_pct)

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of the model's inputs, as timm's ``pretrained_cfg`` writes it."""
        return self.in_chans, self.image_size, self.image_size

    @property
    def build_args(self) -> dict[str, Any]:
        """The builder's arguments that make this model: its own, with the classes and channels."""
        return dict(self.model_args, num_classes=self.num_classes, in_chans=self.in_chans)

    @property
    def filename(self) -> str:
        """The published file's name (the end of ``url``)."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def labels(self) -> tuple[str, ...]:
        """One name per class: ``classes``, else ImageNet-1k's readable names ("goldfish", the first of each class's
        synonyms) for 1000 classes, else the indices."""
        if len(self.classes) == self.num_classes:
            return self.classes
        if self.num_classes == 1000:
            from timm.data import ImageNetInfo

            return tuple(d.split(",")[0] for d in ImageNetInfo().label_descriptions())
        return tuple(str(i) for i in range(self.num_classes))

    def transform(self):
        """The evaluation transform of an image (PIL, of the model's channels): see ``eval_transform``."""
        return eval_transform(self)

    def timm_cfg(self, **arch_facts: Any) -> dict[str, Any]:
        """timm's ``pretrained_cfg`` of this spec; ``arch_facts`` are what only the architecture knows (first
        convolution, pooled size, smallest input)."""
        notes = (f"sha256 prefix {self.sha256[:8]}; reported top-1 {self.top1}",) if self.sha256 else ()
        return dict(url=self.url, num_classes=self.num_classes, input_size=self.input_size, crop_pct=self.crop_pct,
                    interpolation=self.interpolation, mean=tuple(self.mean), std=tuple(self.std), origin_url=self.origin,
                    notes=notes, **arch_facts)

    def data_config(self) -> dict[str, Any]:
        """timm's data config (``timm.data.resolve_data_config``'s keys): timm's preprocessing built from it equals
        ``transform``."""
        return dict(input_size=self.input_size, mean=tuple(self.mean), std=tuple(self.std), crop_pct=self.crop_pct,
                    interpolation=self.interpolation)

    def metadata(self, **extra: Any) -> dict[str, str]:
        """String metadata for a released file (safetensors, ONNX): what a user needs to rebuild the model and feed
        it, as flat keys any reader sees (``arch``, ``num_classes``, ``input_size`` as (C, H, W), mean/std, crop),
        the whole spec as JSON under ``data_info`` (what ``from_dict`` reads back), and ``extra`` (a training run's
        config, epoch, accuracy), dicts and lists as JSON. A builder argument that JSON cannot hold (a norm layer's
        class, given from Python) is written as its text."""
        from ..version import __version__

        meta = dict(format="scnet", arch=self.arch, num_classes=str(self.num_classes), in_chans=str(self.in_chans),
                    input_size=json.dumps(list(self.input_size)), mean=json.dumps(list(self.mean)),
                    std=json.dumps(list(self.std)), crop_pct=str(self.crop_pct), interpolation=self.interpolation,
                    data_info=json.dumps(self.to_dict(), default=str), scnet_version=__version__)
        for key, value in extra.items():
            meta[key] = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)
        return meta

    def to_dict(self) -> dict[str, Any]:
        """The plain dict a checkpoint stores (JSON-safe). Fields at their defaults after ``interpolation`` are left
        out, so a dataset's description is stored as it always was and older readers still take it."""
        values = dataclasses.asdict(self)
        values["model_args"] = dict(self.model_args)
        return {f.name: values[f.name] for i, f in enumerate(dataclasses.fields(self))
                if i < _DATA_FIELDS or values[f.name] != _default(f)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelSpec":
        """A spec stored by ``to_dict`` (lists for tuples). One stored before crop_pct was, of an ImageNet-style set,
        is given the 0.875 its evaluation used; keys this version does not know are refused by name."""
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"a model description with unknown entries {unknown}: written by a newer scnet?")
        values.setdefault("crop_pct", IMAGENET_CROP_PCT if values.get("name") in ("imagenet", "imagefolder") else 1.0)
        return cls(**values)


_DATA_FIELDS = 10  # name ... interpolation: always stored


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


DataInfo = ModelSpec  # the name the datasets' description had: one type now


def spec_of(model: nn.Module, arch: str = "", named: bool = True) -> ModelSpec:
    """The spec of a model built by name, from its timm ``pretrained_cfg``: input size, crop, interpolation and
    mean/std (ImageNet's by default, adapted to the model's channels: ``channel_stats``), its classifier's class count,
    the class names a Hub model carries (else, with ``named``, ImageNet's for 1000 classes: ``labels``), url."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    classes = getattr(model, "num_classes", None) or [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features  # torchvision's have no attribute
    in_chans = int(getattr(model, "in_chans", 3))
    mean, std = (channel_stats(cfg.get(key, default), in_chans) for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)))
    spec = ModelSpec("imagenet", classes, in_chans, size, mean, std, tuple(cfg.get("label_names") or ()),
                     crop_pct=float(cfg.get("crop_pct", IMAGENET_CROP_PCT)), interpolation=str(cfg.get("interpolation") or "bilinear"),
                     arch=arch or str(cfg.get("architecture") or ""), url=str(cfg.get("url") or ""))
    return dataclasses.replace(spec, classes=spec.labels) if named else spec


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


def eval_transform(spec: ModelSpec):
    """The one preparation of an image (PIL, already of the model's channels) for a model described by ``spec``:
    evaluation of an ImageNet-style folder, ``scnet predict``, ``scnet cam`` and the others all go through it, so one
    image gets one set of logits. Short side to ``image_size / crop_pct`` (``spec.interpolation``), centre crop, scale
    to [0, 1], mean/std. torchvision's transforms are imported here, when asked for, not with the models."""
    import torch
    from torchvision.transforms import v2 as T

    resize = T.Resize(spec.resize_side, interpolation=T.InterpolationMode(spec.interpolation), antialias=True)
    return T.Compose([resize, T.CenterCrop(spec.image_size),
                      T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(list(spec.mean), list(spec.std))])
