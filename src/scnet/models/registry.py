"""One small registry: model name -> builder function."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, TypeVar

import torch.nn as nn

__all__ = ["register_model", "list_models", "get_model_builder", "create_model", "create_any_model"]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(fn: F) -> F:
    """Register ``fn`` under its own name; a second registration of a name is a bug and raises."""
    name = fn.__name__
    if name in _BUILDERS:
        raise ValueError(f"a model named {name!r} is already registered")
    _BUILDERS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern))


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder function registered as ``name``; raises ``ValueError`` naming the closest known names otherwise."""
    if name not in _BUILDERS:
        close = difflib.get_close_matches(name, _BUILDERS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(list_models())}"
        raise ValueError(f"unknown model {name!r}{hint}")
    return _BUILDERS[name]


def create_model(name: str, pretrained: bool = False, checkpoint_path: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Keyword arguments whose value is None are dropped, so tools can pass "use the default" without knowing
    each model's defaults. ``name`` may also be ``local-dir:PATH`` or ``hf-hub:ORG/NAME``: a model in timm's Hub
    layout (``scnet export --format hf``), built and loaded from its ``config.json`` and ``model.safetensors``.
    ``pretrained=True`` loads the official weights of ``name``; ``checkpoint_path``
    then loads a local ``.pth``/``.safetensors`` file over them (or over the random init).

    Raises ``ValueError`` for an unknown name (naming the closest ones) or a weight file that does not fit the model,
    ``WeightsUnavailableError`` for ``pretrained=True`` where no weights were published or they cannot be fetched.
    """
    from ..files import HUB_PREFIXES
    from .weights import load_checkpoint, load_pretrained

    if name.startswith(HUB_PREFIXES):
        return _from_hub(name, {k: v for k, v in kwargs.items() if v is not None})
    model = get_model_builder(name)(pretrained=False, **{k: v for k, v in kwargs.items() if v is not None})
    if pretrained:
        load_pretrained(model, name)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, arch=name)
    return model


def _from_hub(ref: str, kwargs: dict[str, Any]) -> nn.Module:
    """A model saved in timm's Hub layout (``local-dir:PATH``, ``hf-hub:ORG/NAME``): its architecture built with its
    saved arguments (the caller's win, e.g. another ``num_classes``: the classifier then stays at its init), its
    weights loaded, its ``pretrained_cfg`` (input size, mean/std, label names) attached."""
    from ..files import read_checkpoint, read_hub_config
    from .weights import load_weights

    config, weights = read_hub_config(ref)
    arch = config["architecture"]
    if arch not in _BUILDERS:
        close = difflib.get_close_matches(arch, _BUILDERS, n=3)
        raise ValueError(f"{ref}: config.json names architecture {arch!r}, which is not an scnet model"
                         + (f" (did you mean {', '.join(close)}?)" if close else "") + "; load it with timm.create_model instead")
    saved = dict(config.get("model_args") or {})
    if config.get("num_classes") is not None:
        saved["num_classes"] = config["num_classes"]
    _check_hub_shapes(ref, arch, saved, weights)
    model = get_model_builder(arch)(pretrained=False, **{**saved, **kwargs})
    load_weights(model, read_checkpoint(weights)["model"], ref)
    cfg = dict(config.get("pretrained_cfg") or {})
    if "label_names" in config:  # timm's top-level place for them
        cfg.setdefault("label_names", config["label_names"])
    for key in ("input_size", "min_input_size", "mean", "std"):
        if isinstance(cfg.get(key), list):
            cfg[key] = tuple(cfg[key])
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **cfg, "source": ref.partition(":")[0], "file": ref}
    return model


def _check_hub_shapes(ref: str, arch: str, saved: dict[str, Any], weights: Any) -> None:
    """Refuse a Hub folder whose config.json does not describe its weights, before anything is allocated: the model
    its config describes is built on the meta device (no memory) and each tensor's shape compared with the weights
    file's header (a config saying 10^9 classes for 2-class weights once asked for terabytes)."""
    import torch

    from ..files import tensor_shapes

    try:
        with torch.device("meta"):
            described = get_model_builder(arch)(pretrained=False, **saved)
    except TypeError as e:  # an argument the builder does not take
        raise ValueError(f"{ref}: config.json's model_args are not arguments of {arch} ({e})") from None
    held = tensor_shapes(weights)
    for key, tensor in described.state_dict().items():
        if key in held and tuple(tensor.shape) != held[key]:
            raise ValueError(f"{ref}: config.json describes {key} as {tuple(tensor.shape)}, but model.safetensors holds "
                             f"{held[key]} (num_classes {saved.get('num_classes')}, model_args "
                             f"{_config_args(saved)}): the config is not this file's")


def _config_args(saved: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in saved.items() if k != "num_classes") or "none"


def create_any_model(name: str, **kwargs: Any) -> nn.Module:
    """One of ours, a torchvision classifier (``resnet50``...) or any timm model, by name, with random weights.

    For the tools that set an SC model beside a baseline the user names (bench, cam, erf): ours come first
    (they are registered in timm too), then torchvision's, then timm's. Weights come through ``scnet.load``.
    """
    from ..files import HUB_PREFIXES

    if name in _BUILDERS or name.startswith(HUB_PREFIXES):
        return create_model(name, **kwargs)
    import timm
    import torchvision

    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name in torchvision.models.list_models(module=torchvision.models):
        return torchvision.models.get_model(name, **kwargs)
    if timm.is_model(name):
        return timm.create_model(name, **kwargs)
    known = list(_BUILDERS) + torchvision.models.list_models(module=torchvision.models)
    close = difflib.get_close_matches(name, known, n=3)
    raise ValueError(f"unknown model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                     + " (not one of ours, torchvision's or timm's)")
