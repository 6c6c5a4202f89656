"""Residual bottlenecks: the SC bottleneck of SCNet and its plain twin.

Both follow the same width rule as torchvision/timm: ``width = int(planes * base_width / 64) * cardinality``
is the total 3x3 width. The SC block splits that width into two halves of ``width / 2`` (the official
``group_width`` with its default ``bottleneck_width=32``), so with equal ``base_width``/``cardinality`` both
blocks hold exactly the same convolution parameters: 2 x (in x w/2) = in x w for the 1x1, and
4 x 9 (w/2)^2 / g = 9 w^2 / g for the 3x3s. Only the number of norm parameters differs.
"""
# No ``from __future__ import annotations``: TorchScript reads the annotations as real types.
from typing import Callable, Optional

import torch
import torch.nn as nn
from timm.layers import DropPath, create_attn

from ..layers import NormLayer, SafeBatchNorm2d, SelfCalibration, conv3x3_norm

__all__ = ["SCBottleneck", "Bottleneck"]


def _avd_pool(avd: bool, stride: int) -> nn.Module:
    # ResNeSt-style "avd": a 3x3 average pool carries the stride after the 3x3s (official v1d).
    return nn.AvgPool2d(3, stride, padding=1) if avd else nn.Identity()


class _BottleneckBase(nn.Module):
    """What both bottlenecks share: the expansion, the merge 1x1 and the residual."""

    expansion = 4

    def _init_merge(
        self, width: int, planes: int, downsample: Optional[nn.Module], norm_layer: NormLayer,
        act_layer: Callable[..., nn.Module], attn_layer: Optional[str], drop_path: float,
    ) -> None:
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        # Channel attention on the residual branch before the sum, where SENet (and timm's seresnet) put it.
        self.se = create_attn(attn_layer, planes * self.expansion) if attn_layer else nn.Identity()
        self.act = act_layer(inplace=True)
        self.downsample = downsample
        # Stochastic depth (Huang et al. 2016): in training, the residual branch of a whole sample is dropped with
        # this probability, the kept ones scaled up; an identity at 0 (the default) and in eval mode.
        if not 0.0 <= float(drop_path) < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path!r}")
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _merge(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = self.drop_path(self.se(self.bn3(self.conv3(out))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(out + shortcut)

    def zero_init_last(self) -> None:
        """Start the block as an identity (Goyal et al. 2017); the official code does not do this."""
        if getattr(self.bn3, "weight", None) is not None:
            nn.init.zeros_(self.bn3.weight)


class SCBottleneck(_BottleneckBase):
    """SCNet bottleneck: two half-width 1x1 branches, K1 on one, self-calibration on the other.

    The two 1x1s ``conv1_a``/``conv1_b`` with their own norms equal one full-width 1x1 followed by a split
    (the authors' answer in MCG-NKU/SCNet#6); they are kept separate because the official checkpoints name
    them so. The ReLU after K1/K4 and the avd pool act per channel, so they are applied once to the
    concatenation instead of to each branch, with identical results.
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        cardinality: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        avd: bool = False,
        norm_layer: NormLayer = SafeBatchNorm2d,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        attn_layer: Optional[str] = None,
        pooling_r: int = 4,
        upsample_mode: str = "nearest",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        width = int(planes * base_width / 64) * cardinality
        half = width // 2
        conv_stride = 1 if avd else stride
        self.conv1_a = nn.Conv2d(inplanes, half, 1, bias=False)
        self.bn1_a = norm_layer(half)
        self.conv1_b = nn.Conv2d(inplanes, half, 1, bias=False)
        self.bn1_b = norm_layer(half)
        self.k1 = conv3x3_norm(half, half, conv_stride, dilation, cardinality, norm_layer)
        self.scconv = SelfCalibration(half, half, conv_stride, dilation, cardinality, pooling_r, norm_layer, upsample_mode)
        self.avd_layer = _avd_pool(avd, stride)
        self._init_merge(width, planes, downsample, norm_layer, act_layer, attn_layer, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.bn1_a(self.conv1_a(x)))  # (N, w/2, H, W)
        b = self.act(self.bn1_b(self.conv1_b(x)))  # (N, w/2, H, W)
        out = self.act(torch.cat([self.k1(a), self.scconv(b)], dim=1))  # (N, w, H/s, W/s) unless avd
        out = self.avd_layer(out)  # (N, w, H/s, W/s)
        return self._merge(out, x)


class Bottleneck(_BottleneckBase):
    """The plain twin: a ResNet bottleneck whose 3x3 is one ``nn.Conv2d``, on the same trunk and options."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        cardinality: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        avd: bool = False,
        norm_layer: NormLayer = SafeBatchNorm2d,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        attn_layer: Optional[str] = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        width = int(planes * base_width / 64) * cardinality
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(
            width, width, 3, stride=1 if avd else stride, padding=dilation, dilation=dilation,
            groups=cardinality, bias=False,
        )
        self.bn2 = norm_layer(width)
        self.avd_layer = _avd_pool(avd, stride)
        self._init_merge(width, planes, downsample, norm_layer, act_layer, attn_layer, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))  # (N, w, H, W)
        out = self.act(self.bn2(self.conv2(out)))  # (N, w, H/s, W/s) unless avd
        out = self.avd_layer(out)  # (N, w, H/s, W/s)
        return self._merge(out, x)
