"""The SCNet family and its plain-ResNet twins: variants as data over one trunk.

Each builder is a few keyword arguments merged under the caller's (the caller wins). The twin of a variant
``X`` is ``X_plain``: the same trunk, stem, shortcut and avd options, with the plain ``Bottleneck`` in place
of ``SCBottleneck``, so conv parameter counts are equal and comparisons are like for like.
"""
from __future__ import annotations

from typing import Any

from .blocks import Bottleneck, SCBottleneck
from .registry import register_model
from .resnet import ResNet
from .weights import load_pretrained, pretrained_cfg

__all__ = ["build_model", "plain_twin"]

_V1D = dict(stem_type="deep", avg_down=True, avd=True)


def build_model(name: str, pretrained: bool, arch_args: dict[str, Any], **kwargs: Any) -> ResNet:
    """The one builder behind every registered name: trunk, config, and (optionally) the official weights."""
    model = ResNet(**{**arch_args, **kwargs})
    model.pretrained_cfg = pretrained_cfg(name)
    if pretrained:
        load_pretrained(model, name)
    return model


def plain_twin(name: str) -> str:
    """The registered name of ``name``'s plain-ResNet twin."""
    return name if name.endswith("_plain") else f"{name}_plain"


@register_model
def scnet50(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """SCNet-50 (25.56 M params, 77.81% ImageNet top-1 with the official weights)."""
    return build_model("scnet50", pretrained, dict(block=SCBottleneck, layers=(3, 4, 6, 3)), **kwargs)


@register_model
def scnet101(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """SCNet-101 (44.57 M params, 78.94% ImageNet top-1 with the official weights)."""
    return build_model("scnet101", pretrained, dict(block=SCBottleneck, layers=(3, 4, 23, 3)), **kwargs)


@register_model
def scnet50_v1d(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """SCNet-50 v1d: deep 3x3 stem (width 32), avg-pool shortcuts, avd (80.47% top-1 with the official weights)."""
    return build_model("scnet50_v1d", pretrained, dict(block=SCBottleneck, layers=(3, 4, 6, 3), stem_width=32, **_V1D), **kwargs)


@register_model
def scnet101_v1d(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """SCNet-101 v1d: deep 3x3 stem (width 64), avg-pool shortcuts, avd. No official weights were released."""
    return build_model("scnet101_v1d", pretrained, dict(block=SCBottleneck, layers=(3, 4, 23, 3), stem_width=64, **_V1D), **kwargs)


@register_model
def scnet50_plain(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Plain twin of SCNet-50: ResNet-50 (v1.5, stride in the 3x3) on the same trunk."""
    return build_model("scnet50_plain", pretrained, dict(block=Bottleneck, layers=(3, 4, 6, 3)), **kwargs)


@register_model
def scnet101_plain(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Plain twin of SCNet-101: ResNet-101 on the same trunk."""
    return build_model("scnet101_plain", pretrained, dict(block=Bottleneck, layers=(3, 4, 23, 3)), **kwargs)


@register_model
def scnet50_v1d_plain(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Plain twin of SCNet-50 v1d: a ResNet-50-D with avd on the same trunk."""
    return build_model("scnet50_v1d_plain", pretrained, dict(block=Bottleneck, layers=(3, 4, 6, 3), stem_width=32, **_V1D), **kwargs)


@register_model
def scnet101_v1d_plain(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Plain twin of SCNet-101 v1d: a ResNet-101-D with avd on the same trunk."""
    return build_model("scnet101_v1d_plain", pretrained, dict(block=Bottleneck, layers=(3, 4, 23, 3), stem_width=64, **_V1D), **kwargs)
