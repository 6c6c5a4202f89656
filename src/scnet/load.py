"""The front door for models and weights: any model reference becomes the model and what it expects.

``load_model`` takes a registered name, a torchvision or timm name, a training checkpoint or a release
(``.pth``/``.safetensors`` that carry their configuration), an official ``.pth`` (recognised by its published
file name), or a name with a bare weight file, and returns a ``LoadedModel``: the model in eval mode and its
``DataInfo`` (classes, channels, input size, mean/std), a label and where it came from. Every tool (eval,
predict, cam, erf, bench, export, train's resume through ``load_weights``) gets its models here; files are read
through ``models.resolve`` (which reads) and enter a model only through ``models.weights.load_weights``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch.nn as nn

from .data import IMAGENET_CROP_PCT, DataInfo
from .files import HUB_PREFIXES
from .models import registry
from .models.resolve import BareWeightsError, build, config_args, resolve
from .models.weights import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["BareWeightsError", "LoadedModel", "load_model", "model_from_config", "data_info_of"]


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
    return registry.build(config["model"], num_classes=info.num_classes, in_chans=info.in_chans, **config_args(config))


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
    resolved = resolve(name, file, pretrained=pretrained, use_ema=use_ema)  # every read happens here
    if resolved.trained:
        info = DataInfo.from_dict(resolved.checkpoint["data_info"])
        model = build(resolved)
        args = {k: v for k, v in resolved.model_args.items() if k in ("stem_type", "norm_layer", "in_chans")}
        return LoadedModel(model.eval(), info, f"{resolved.arch} (trained)", str(file), resolved.checkpoint, resolved.arch, args)
    hub = bool(name) and name.startswith(HUB_PREFIXES)
    name, arch = (name if hub else resolved.arch), resolved.arch  # a Hub model is named by its reference
    if data_info is not None:
        kwargs = dict(kwargs, in_chans=data_info.in_chans, num_classes=data_info.num_classes)
    model = build(resolved, **kwargs)
    label = f"{name} ({'weights' if file or hub else 'pretrained' if pretrained else 'init'})"
    info = data_info if data_info is not None else data_info_of(model)
    args = {k: v for k, v in kwargs.items() if v is not None and k != "num_classes"}
    if hub or "in_chans" not in args:
        args["in_chans"] = info.in_chans
    source = str(file) if file else name if hub else "pretrained" if pretrained else "init"
    return LoadedModel(model.eval(), info, label, source, None, arch, args)
