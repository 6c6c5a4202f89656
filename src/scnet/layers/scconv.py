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
kernel 3): convolutions, norms, pooling and upsampling of that dimension, the same formula and size rule. The
2-D layer alone has the fused training and inference paths (oneDNN, cuDNN, Triton).
"""
import copy
# No ``from __future__ import annotations``: TorchScript reads the fused forms' annotations as real types.
from typing import Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from .fusion import FusedConv, Unfoldable, fold_conv_norm, running_eagerly
from .gate import UPSAMPLE_MODES, calibrated_product, calibration_gate, lean_calibrated_conv, triton_gate_product
from .norm import NormLayer, SafeBatchNorm2d, count_batch, get_norm_layer, stackable_norms
from .validate import check_image_batch

__all__ = ["CalibrationPool", "SelfCalibration", "SCConv", "SCConv1d", "SCConv3d", "FusedSelfCalibration", "FusedSCConv", "conv3x3_norm",
           "UPSAMPLE_MODES", "SC_LAYERS"]

_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _dims(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in _CONVS:
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
    conv = _CONVS[dims](
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

    def calibrated(self, x: torch.Tensor) -> torch.Tensor:
        """``K3(x) * sigmoid(x + Up(K2(AvgPool_r(x))))``, the input of K4 (the SC bottleneck runs K4 itself in training)."""
        calib = self.k2(x)  # (N, C, max(1, H//r), max(1, W//r))
        return calibrated_product(self.k3(x), x, calib, self.upsample_mode)  # (N, C, H, W)

    def calibrated_conv(self, x: torch.Tensor) -> torch.Tensor:
        """K4's convolution of ``calibrated(x)``, before K4's norm; in training, memory-lean (``lean_calibrated_conv``)."""
        if self.training and self._trains_lean(x):
            return self._lean_conv(x)
        return self.k4[0](self.calibrated(x))  # (N, C_out, H/s, W/s)

    @torch.jit.unused
    def _lean_conv(self, x: torch.Tensor) -> torch.Tensor:
        k3_conv, k3_norm = self.k3[0], self.k3[1]
        count_batch(k3_norm)
        r = self.k2[0].pooling_r if running_eagerly() else 0
        return lean_calibrated_conv(k3_conv(x), x, self.k2(x), k3_norm, self.k4[0], self.upsample_mode, r)  # (N, C_out, H/s, W/s)

    @torch.jit.unused
    def _trains_lean(self, x: torch.Tensor) -> bool:
        """The lean path needs a plain training batch norm after K3 that sees more than one value per channel."""
        if torch.jit.is_scripting() or is_fx_symbolic_tracing():
            return False
        if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
            return False  # under autocast the plain ops choose each one's precision
        k4_conv = self.k4[0]  # its weight and geometry are read directly
        return (stackable_norms(self.k3[1]) and type(k4_conv) is nn.Conv2d and k4_conv.bias is None and k4_conv.padding_mode == "zeros"
                and x.shape[0] * x.shape[-2] * x.shape[-1] > 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.k4[1](self.calibrated_conv(x))  # (N, C_out, H/s, W/s)

    def deploy_form(self, onednn: bool = True, relu_out: bool = False) -> nn.Module:
        """The eval-mode form: norms folded, the gate product inside K3's call (see ``FusedSelfCalibration``); in
        1-D and 3-D, a copy whose convolutions absorb their norms."""
        if self.dims != 2:
            return _folded_copy(self, relu_out)
        return FusedSelfCalibration(self, relu_out, onednn)


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
        in_channels, out_channels: even channel counts (out defaults to in); each half must divide by groups.
        stride: applied by K1 and K4 only, as in the official code.
        dilation, groups: as for ``nn.Conv2d``, applied to all four convolutions.
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

    def deploy_form(self, onednn: bool = True, relu_out: bool = False) -> nn.Module:
        """The eval-mode form: K1 and the calibration folded and fused (see ``FusedSCConv``); in 1-D and 3-D, a copy
        whose convolutions absorb their norms."""
        if self.dims != 2:
            return _folded_copy(self, relu_out)
        return FusedSCConv(self, relu_out, onednn)

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


def _folded_copy(layer: nn.Module, relu_out: bool) -> nn.Module:
    """A copy of a 1-D/3-D SC layer in eval mode whose convolutions absorb their batch norms (``fold_conv_norm``):
    the same forward, four fewer norm passes. A norm without running statistics (GroupNorm) raises ``Unfoldable``."""
    folded = copy.deepcopy(layer)
    for seq in [m for m in folded.modules() if isinstance(m, nn.Sequential) and len(m) >= 2 and isinstance(m[-2], tuple(_CONVS.values()))]:
        conv, norm = seq[-2], seq[-1]
        weight, bias = fold_conv_norm(conv, norm)
        conv.weight = nn.Parameter(weight, requires_grad=False)
        conv.bias = nn.Parameter(bias, requires_grad=False)
        seq[-1] = nn.Identity()
    return nn.Sequential(folded, nn.ReLU(inplace=True)) if relu_out else folded


def _fold(seq: nn.Sequential, relu: bool = False, onednn: bool = True) -> FusedConv:
    # conv3x3_norm's Sequential(conv, norm); K2 has the pool in front: Sequential(pool, conv, norm).
    return FusedConv.fold(seq[-2], seq[-1], relu=relu, onednn=onednn)


class FusedSelfCalibration(nn.Module):
    """``SelfCalibration`` in eval mode: ``K4(K3(x) * calibration_gate(x, K2(pool(x))))`` with norms folded.

    The upsample is a broadcast, never materialised, when each pooled cell maps to an r x r block (see
    ``calibration_gate``). The product with the gate runs inside K3's convolution and ``relu_out`` (the
    bottleneck's ReLU) inside K4's. On a GPU in eager mode (nearest upsampling), K2's and K3's biases, the sum,
    the sigmoid and the product are one Triton kernel instead of five memory-bound passes.
    """

    def __init__(self, sc: SelfCalibration, relu_out: bool = False, onednn: bool = True) -> None:
        super().__init__()
        self.pooling_r = sc.k2[0].pooling_r
        self.upsample_mode = sc.upsample_mode
        self.k2 = _fold(sc.k2, onednn=onednn)
        self.k3 = _fold(sc.k3, onednn=onednn)
        self.k4 = _fold(sc.k4, relu=relu_out, onednn=onednn)

    def _broadcast_r(self) -> int:
        """r where Python may branch on sizes (eager, TorchScript), else 0: a recorded graph keeps the general path."""
        if torch.jit.is_scripting():
            return self.pooling_r  # TorchScript evaluates the size test at run time
        return self._eager_r()

    @torch.jit.unused
    def _eager_r(self) -> int:
        return self.pooling_r if running_eagerly() else 0

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """``sigmoid(x + Up(K2(pool(x))))``, the calibration weights, (N, C, H, W)."""
        calib = self.k2(calibration_pool(x, self.pooling_r))  # (N, C, max(1, H//r), max(1, W//r))
        return calibration_gate(x, calib, self.upsample_mode, self._broadcast_r())

    def _use_triton(self, x: torch.Tensor) -> bool:
        if torch.jit.is_scripting():
            return False
        return self._triton_eager(x)

    @torch.jit.unused
    def _triton_eager(self, x: torch.Tensor) -> bool:
        return self.upsample_mode == "nearest" and self.k3.on_gpu(x) and triton_gate_product() is not None

    @torch.jit.unused
    def _triton_product(self, x: torch.Tensor) -> torch.Tensor:
        calib = self.k2.conv_without_bias(calibration_pool(x, self.pooling_r))  # (N, C, max(1, H//r), max(1, W//r))
        # K2's and K3's biases are added inside the kernel, which reads each tensor once anyway.
        return triton_gate_product()(self.k3.conv_without_bias(x), x, calib, self.k3.bias, self.k2.bias)  # (N, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_triton(x):
            return self.k4(self._triton_product(x))  # (N, C_out, H/s, W/s)
        return self.k4(self.k3(x, self.gate(x), "mul"))  # (N, C_out, H/s, W/s)


class FusedSCConv(nn.Module):
    """``SCConv`` in eval mode: K1 and the fused calibration on the two channel halves, then one concat."""

    def __init__(self, layer: SCConv, relu_out: bool = False, onednn: bool = True) -> None:
        super().__init__()
        self.half = layer.in_channels // 2
        self.k1 = _fold(layer.k1, relu=relu_out, onednn=onednn)
        self.scconv = FusedSelfCalibration(layer.scconv, relu_out=relu_out, onednn=onednn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = self.k1(x[:, :self.half])  # (N, C_out/2, H/s, W/s)
        return torch.cat([plain, self.scconv(x[:, self.half:])], dim=1)  # (N, C_out, H/s, W/s)
