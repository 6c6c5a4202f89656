"""Self-calibrated convolution (Liu et al., CVPR 2020), as a generic layer that knows no architecture.

Paper notation, for an input X split into halves X1 (calibrated) and X2 (plain):

    T1  = AvgPool_r(X1)
    X1' = Up(K2 * T1)                       sized back to X1's exact H x W
    Y1  = K4 * (K3 * X1 . sigmoid(X1 + X1'))
    Y2  = K1 * X2
    Y   = [Y2, Y1]                          (order of the official code: plain half first)

Every K is a 3x3 convolution followed by a norm. ``SelfCalibration`` is the K2/K3/K4 branch (the official
``SCConv`` module, same state-dict names); ``SCConv`` is the whole drop-in for a 3x3 ``nn.Conv2d``.

The same classes take ``dims`` 1 or 3 (``SCConv1d``, ``SCConv3d``: drop-ins for ``nn.Conv1d``/``nn.Conv3d`` with
kernel 3): convolutions, norms, pooling and upsampling of that dimension, the same formula and size rule.

This module is the reference: each forward is the formula above and nothing else. The faster forms of these layers
(training and inference) live in ``scnet.fast`` and are swapped in explicitly (``scnet.fast_train``, ``scnet.deploy``).
"""
# No ``from __future__ import annotations``: TorchScript reads the annotations as real types.
from typing import Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from .gate import UPSAMPLE_MODES, calibration_gate
from .norm import NormLayer, SafeBatchNorm2d, get_norm_layer
from .validate import check_image_batch

__all__ = ["CalibrationPool", "SelfCalibration", "SCConv", "SCConv1d", "SCConv3d", "conv3x3_norm", "UPSAMPLE_MODES", "SC_LAYERS",
           "CONVS"]

CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}  # the convolution of each number of spatial dimensions


def _dims(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in CONVS:
        raise ValueError(f"dims must be 1, 2 or 3 (spatial dimensions), got {value!r}")
    return value


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def conv3x3_norm(
    in_channels: int,
    out_channels: int,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    norm_layer: NormLayer | None = SafeBatchNorm2d,
    dims: int = 2,
) -> nn.Sequential:
    """A 3x3 convolution (padding = dilation, so stride 1 keeps H x W) followed by a norm (3 or 3x3x3 with ``dims``).

    Returned as ``Sequential(conv, norm)`` because the official checkpoints name these ``k1.0`` / ``k1.1``
    (weight compatibility requires the index keys). Without a norm the conv gets a bias, as a plain conv would.
    """
    conv = CONVS[dims](
        in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation,
        groups=groups, bias=norm_layer is None,
    )
    return nn.Sequential(conv, norm_layer(out_channels) if norm_layer is not None else nn.Identity())


def calibration_pool(x: torch.Tensor, r: int) -> torch.Tensor:
    """``AvgPool_r`` with the size rule of ``CalibrationPool``: an r x r window, or the whole side when shorter."""
    if x.dim() == 4:
        kh, kw = min(r, x.shape[-2]), min(r, x.shape[-1])
        return F.avg_pool2d(x, [kh, kw], [kh, kw])  # (N, C, max(1, H//r), max(1, W//r))
    window = [min(r, side) for side in x.shape[2:]]
    if x.dim() == 3:
        return F.avg_pool1d(x, window, window)  # (N, C, max(1, L//r))
    return F.avg_pool3d(x, window, window)  # (N, C, max(1, D//r), max(1, H//r), max(1, W//r))


@register_notrace_module  # the window depends on the input size: a leaf for FX tracing
class CalibrationPool(nn.Module):
    """Average pooling with an r x r window and stride r, floor mode, as the official ``AvgPool2d(r, r)``.

    The size rule: a side of length L >= r gives floor(L / r) cells (the official numbers exactly); a side
    shorter than r is averaged whole into one cell, where the official code raises "Output size is too
    small". So the pooled size is ``max(1, L // r)`` and any map of at least 1 x 1 works.
    """

    def __init__(self, pooling_r: int) -> None:
        super().__init__()
        self.pooling_r = _positive_int(pooling_r, "pooling_r")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return calibration_pool(x, self.pooling_r)

    def extra_repr(self) -> str:
        return f"pooling_r={self.pooling_r}"


class SelfCalibration(nn.Module):
    """The self-calibrated branch: ``K4(K3(x) * sigmoid(x + Up(K2(AvgPool_r(x)))))``.

    K2 and K3 run at the input resolution and keep ``in_channels`` (the gate is added to ``x`` itself); only
    K4 carries the stride and maps to ``out_channels``. This is where the official code puts the stride too.

    Departure from the paper: the paper writes Up as bilinear; the official code (and so the official weights)
    uses nearest, which is the default here.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        pooling_r: int = 4,
        norm_layer: Union[str, NormLayer, None] = SafeBatchNorm2d,
        upsample_mode: str = "nearest",
        dims: int = 2,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if upsample_mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode must be one of {UPSAMPLE_MODES}, got {upsample_mode!r}")
        dims = _dims(dims)
        norm_layer = _norm_for(norm_layer, dims)
        self.upsample_mode = upsample_mode
        self.dims = dims
        # Keys k2.1/k2.2, k3.0/k3.1, k4.0/k4.1 are the official ones: k2.0 is the (parameter-free) pool.
        self.k2 = nn.Sequential(CalibrationPool(pooling_r), *conv3x3_norm(in_channels, in_channels, 1, dilation, groups, norm_layer, dims))
        self.k3 = conv3x3_norm(in_channels, in_channels, 1, dilation, groups, norm_layer, dims)
        self.k4 = conv3x3_norm(in_channels, out_channels, stride, dilation, groups, norm_layer, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        calib = self.k2(x)  # K2 * AvgPool_r(x): (N, C, max(1, H//r), max(1, W//r))
        return self.k4(self.k3(x) * calibration_gate(x, calib, self.upsample_mode))  # (N, C_out, H/s, W/s)


class SCConv(nn.Module):
    """Self-calibrated convolution: a drop-in for ``nn.Conv2d(in_channels, out_channels, 3, stride, padding=dilation)``.

    The first half of the channels goes through a plain 3x3 conv (K1), the second half through
    ``SelfCalibration`` (K2, K3, K4); the outputs are concatenated in that order, as in the official
    bottleneck. Output size equals the plain conv's: ``floor((H - 1) / stride) + 1``.

    Conv parameters: ``9 * in * (in + out) / (2 * groups)``, which is ``nn.Conv2d(C, C, 3, groups=g)``'s
    ``9 * C * C / g`` when in == out. When out != in, calibration happens in input space (K2, K3 keep
    ``in / 2`` channels, so ``x + Up(K2(T))`` is defined) and only K1 and K4 map to ``out / 2``; the official
    code requires out == in.

    Args:
        in_channels: an even channel count; each half must divide by groups.
        out_channels: an even channel count (defaults to in_channels); each half must divide by groups.
        stride: applied by K1 and K4 only, as in the official code.
        dilation: as for ``nn.Conv2d``, applied to all four convolutions.
        groups: as for ``nn.Conv2d``, applied to all four convolutions.
        pooling_r: the calibration pooling rate r (the paper's 4); maps smaller than r are pooled whole.
        norm_layer: norm after each K (a callable, a name such as "groupnorm", or None for a BN-free net).
        upsample_mode: "nearest" (what the official weights were trained with) or "bilinear" (the paper's text).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        pooling_r: int = 4,
        norm_layer: Union[str, NormLayer, None] = SafeBatchNorm2d,
        upsample_mode: str = "nearest",
        dims: int = 2,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        dims = _dims(dims)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            _positive_int(value, name)
            if value % 2:
                raise ValueError(f"SCConv splits channels into two halves, so {name} must be even, got {value}")
        for name, value in (("stride", stride), ("dilation", dilation), ("groups", groups), ("pooling_r", pooling_r)):
            _positive_int(value, name)
        half_in, half_out = in_channels // 2, out_channels // 2
        if half_in % groups or half_out % groups:
            raise ValueError(
                f"groups={groups} must divide both halves (in_channels/2={half_in}, out_channels/2={half_out})"
            )
        norm_layer = _norm_for(norm_layer, dims)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.dims = dims
        self.owner = type(self).__name__  # what error messages call the layer
        self.k1 = conv3x3_norm(half_in, half_out, stride, dilation, groups, norm_layer, dims)
        self.scconv = SelfCalibration(half_in, half_out, stride, dilation, groups, pooling_r, norm_layer, upsample_mode, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.in_channels, self.owner, self.k1[0].weight, self.dims)
        half = self.in_channels // 2
        plain = self.k1(x[:, :half])  # (N, C_out/2, H/s, W/s)
        calibrated = self.scconv(x[:, half:])  # (N, C_out/2, H/s, W/s)
        return torch.cat([plain, calibrated], dim=1)  # (N, C_out, H/s, W/s)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class SCConv1d(SCConv):
    """Self-calibrated convolution over sequences (N, C, L): a drop-in for ``nn.Conv1d(in, out, 3, stride,
    padding=dilation)``. ``SCConv`` with ``dims=1``: the same formula, arguments, size rule and errors; the norm
    names resolve to their 1-D forms and "bilinear" upsampling is linear."""

    def __init__(self, in_channels: int, out_channels: int | None = None, stride: int = 1, dilation: int = 1, groups: int = 1,
                 pooling_r: int = 4, norm_layer: Union[str, NormLayer, None] = "batchnorm", upsample_mode: str = "nearest") -> None:
        super().__init__(in_channels, out_channels, stride, dilation, groups, pooling_r, norm_layer, upsample_mode, dims=1)


class SCConv3d(SCConv):
    """Self-calibrated convolution over volumes (N, C, D, H, W): a drop-in for ``nn.Conv3d(in, out, 3, stride,
    padding=dilation)``. ``SCConv`` with ``dims=3`` ("bilinear" upsampling is trilinear)."""

    def __init__(self, in_channels: int, out_channels: int | None = None, stride: int = 1, dilation: int = 1, groups: int = 1,
                 pooling_r: int = 4, norm_layer: Union[str, NormLayer, None] = "batchnorm", upsample_mode: str = "nearest") -> None:
        super().__init__(in_channels, out_channels, stride, dilation, groups, pooling_r, norm_layer, upsample_mode, dims=3)


SC_LAYERS = {1: SCConv1d, 2: SCConv, 3: SCConv3d}  # by spatial dimensions: what replaces nn.Conv1d/2d/3d


def _norm_for(norm_layer: Union[str, NormLayer, None], dims: int) -> NormLayer | None:
    """The norm of a ``dims``-D layer: the 2-D default ``SafeBatchNorm2d`` becomes its 1-D/3-D form."""
    if norm_layer is SafeBatchNorm2d and dims != 2:
        norm_layer = "batchnorm"
    return get_norm_layer(norm_layer, dims)
