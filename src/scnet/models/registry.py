"""One small registry: model name -> builder function. Building here reads nothing (``resolve`` does)."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, TypeVar

import torch.nn as nn

__all__ = ["register_model", "list_models", "get_model_builder", "build", "create_any_model"]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
F = TypeVar("F", bound=Callable[..., nn.Module])
# Keywords every builder takes beyond the architecture's, each a change applied to the built model by a package above
# this one (``fast_train``: the training forms, from ``scnet.fast``), which registers it: the models never import it.
_BUILD_OPTIONS: dict[str, Callable[[nn.Module], nn.Module]] = {}


def register_build_option(name: str, apply: Callable[[nn.Module], nn.Module]) -> None:
    """Let every builder take ``name=True`` (through ``create_model`` and ``timm.create_model`` alike): ``apply`` is
    called on the built model. A second registration of a name is a bug and raises."""
    if name in _BUILD_OPTIONS:
        raise ValueError(f"a build option named {name!r} is already registered")
    _BUILD_OPTIONS[name] = apply


def apply_build_options(model: nn.Module, options: dict[str, Any]) -> nn.Module:
    """``model`` with each option given as true applied (``register_build_option``); an option's value must be a bool."""
    for name, value in options.items():
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
        if value:
            model = _BUILD_OPTIONS[name](model)
    return model


def split_build_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the builder's own keyword arguments, the build options among them)."""
    return ({k: v for k, v in kwargs.items() if k not in _BUILD_OPTIONS},
            {k: v for k, v in kwargs.items() if k in _BUILD_OPTIONS})


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


def build(name: str, **kwargs: Any) -> nn.Module:
    """A registered model with random weights: a lookup and a call, no I/O (weights come through ``resolve``).
    Keyword arguments whose value is None are dropped, so tools can pass "use the default" without knowing each
    model's defaults."""
    return get_model_builder(name)(pretrained=False, **{k: v for k, v in kwargs.items() if v is not None})


def create_any_model(name: str, **kwargs: Any) -> nn.Module:
    """One of ours, a torchvision classifier (``resnet50``...) or any timm model, by name, with random weights.

    For the tools that set an SC model beside a baseline the user names (bench, cam, erf): ours come first
    (they are registered in timm too), then torchvision's, then timm's. Weights come through ``resolve``.
    """
    if name in _BUILDERS:
        return build(name, **kwargs)
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
