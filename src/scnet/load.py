"""The front door for models and weights: any model reference becomes the model and what it expects.

``load_model`` takes a registered name, a torchvision or timm name, a training checkpoint or a release
(``.pth``/``.safetensors`` that carry their configuration), an official ``.pth`` (recognised by its published
file name), or a name with a bare weight file, and returns a ``LoadedModel``: the model in eval mode and its
``ModelSpec`` (classes, channels, input size, crop, mean/std, architecture), a label and where it came from. Every tool (eval,
predict, cam, erf, bench, export, train's resume through ``load_weights``) gets its models here; files are read
through ``models.resolve`` (which reads) and enter a model only through ``models.weights.load_weights``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import torch.nn as nn

from .files import HUB_PREFIXES
from .models import registry
from .models.resolve import BareWeightsError, build, config_args, resolve
from .models.spec import ModelSpec, spec_of

__all__ = ["BareWeightsError", "LoadedModel", "load_model", "model_from_config"]


@dataclass
class LoadedModel:
    """A model (eval mode) with its spec (what it is and expects: classes, input size, mean/std, architecture), a
    label for reports and its source."""

    model: nn.Module
    info: ModelSpec
    label: str  # e.g. "scnet_demo (trained)", "resnet50 (weights)", "scnet50 (init)"
    source: str  # the file it was read from, "pretrained", or "init"
    checkpoint: Optional[dict[str, Any]] = None  # a training checkpoint as read, for callers that want its history

    @property
    def arch(self) -> Optional[str]:
        """The registered (or torchvision/timm) name it was built from."""
        return self.info.arch or None

    @property
    def model_args(self) -> dict[str, Any]:
        """The builder's arguments besides ``num_classes`` that rebuild it (timm's Hub layout stores them)."""
        return dict(self.info.model_args, in_chans=self.info.in_chans)


def model_from_config(config: dict[str, Any], info: ModelSpec) -> nn.Module:
    """The model a training configuration describes, shaped for its dataset (classes, channels), random weights."""
    return registry.build(config["model"], num_classes=info.num_classes, in_chans=info.in_chans, **config_args(config))


def load_model(name: Optional[str] = None, file: Optional[str] = None, *, pretrained: bool = False, use_ema: bool = False,
               data_info: Optional[ModelSpec] = None, **kwargs: Any) -> LoadedModel:
    """Any model reference as a model in eval mode with its spec (see the module's docstring).

    ``name`` alone builds that model (ours, torchvision's or timm's; ``local-dir:PATH`` or ``hf-hub:ORG/NAME``, a
    model in timm's Hub layout with its weights and description): with ``pretrained``, our published weights
    (hash-checked download); with ``data_info`` (a dataset's spec), shaped for that dataset (channels, classes) and
    described by it. ``file`` is a training checkpoint or release (``name``, if given, must match it), an official
    ``.pth`` (``name`` may be left out), or bare weights for ``name``. ``use_ema`` takes a checkpoint's EMA weights.
    Other keyword arguments go to the builder (e.g. ``num_classes``, ``in_chans``, ``stem_type``).

    Raises ``BareWeightsError`` for bare weights without a model name, ``ValueError`` for an unknown name, a file of
    another model or weights that do not fit, ``FileNotFoundError`` for a missing file.
    """
    resolved = resolve(name, file, pretrained=pretrained, use_ema=use_ema)  # every read happens here
    if resolved.trained:
        return LoadedModel(build(resolved).eval(), resolved.spec, f"{resolved.arch} (trained)", str(file), resolved.checkpoint)
    hub = bool(name) and name.startswith(HUB_PREFIXES)
    if data_info is not None:
        kwargs = dict(kwargs, in_chans=data_info.in_chans, num_classes=data_info.num_classes)
    model = build(resolved, **kwargs)
    args = {k: v for k, v in {**resolved.model_args, **kwargs}.items() if v is not None and k not in ("num_classes", "in_chans")}
    spec = _spec_for(model, data_info or resolved.spec, resolved.arch, args)
    label = f"{name if hub else resolved.arch} ({'weights' if file or hub else 'pretrained' if pretrained else 'init'})"
    source = str(file) if file else name if hub else "pretrained" if pretrained else "init"
    return LoadedModel(model.eval(), spec, label, source)


def _spec_for(model: nn.Module, declared: Optional[ModelSpec], arch: str, args: dict[str, Any]) -> ModelSpec:
    """The spec of a model built by name: the one its source or caller declares when the model has its classes and
    channels, else the model's own (``spec_of``); with the architecture and the builder's arguments it was built with,
    and a name for every class."""
    own = spec_of(model, arch, named=False)  # named once, below
    if declared is None or (declared.num_classes, declared.in_chans) != (own.num_classes, own.in_chans):
        declared = own
    return replace(declared, arch=arch, model_args=args, classes=declared.labels)
