"""Residual bottlenecks: the SC bottleneck of SCNet and its plain twin.

Both follow the same width rule as torchvision/timm: ``width = int(planes * base_width / 64) * cardinality``
is the total 3x3 width. The SC block splits that width into two halves of ``width / 2`` (the official
``group_width`` with its default ``bottleneck_width=32``), so with equal ``base_width``/``cardinality`` both
blocks hold exactly the same convolution parameters: 2 x (in x w/2) = in x w for the 1x1, and
4 x 9 (w/2)^2 / g = 9 w^2 / g for the 3x3s. Only the number of norm parameters differs.
"""
# No ``from __future__ import annotations``: TorchScript reads the fused forms' annotations as real types.
import contextlib
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_attn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from ..layers import NormLayer, SafeBatchNorm2d, SelfCalibration, conv3x3_norm
from ..layers.fusion import FusedConv, fold_conv_norm, require_relu
from ..layers.norm import stackable_norms, stacked_batch_norm, stacked_batch_norm_again
from ..layers.recompute import can_recompute, recomputed
from ..layers.scconv import FusedSelfCalibration

__all__ = ["SCBottleneck", "Bottleneck", "FusedSCBottleneck", "FusedBottleneck"]


def _avd_pool(avd: bool, stride: int) -> nn.Module:
    # ResNeSt-style "avd": a 3x3 average pool carries the stride after the 3x3s (official v1d).
    return nn.AvgPool2d(3, stride, padding=1) if avd else nn.Identity()


class _BottleneckBase(nn.Module):
    """What both bottlenecks share: the expansion, the merge 1x1 and the residual."""

    expansion = 4

    def _init_merge(
        self, width: int, planes: int, downsample: Optional[nn.Module], norm_layer: NormLayer,
        act_layer: Callable[..., nn.Module], attn_layer: Optional[str],
    ) -> None:
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        # Channel attention on the residual branch before the sum, where SENet (and timm's seresnet) put it.
        self.se = create_attn(attn_layer, planes * self.expansion) if attn_layer else nn.Identity()
        self.act = act_layer(inplace=True)
        self.downsample = downsample

    def _merge(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = self.se(self.bn3(self.conv3(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        if self.training:
            # In place, as torchvision's blocks: no fresh full-size tensor per block. Eval keeps the out-of-place
            # sum, which the ONNX exporter needs.
            out += shortcut
            return self.act(out)
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
        self._init_merge(width, planes, downsample, norm_layer, act_layer, attn_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self._trains_stacked():
            return self._forward_stacked(x)
        a = self.act(self.bn1_a(self.conv1_a(x)))  # (N, w/2, H, W)
        b = self.act(self.bn1_b(self.conv1_b(x)))  # (N, w/2, H, W)
        out = self.act(torch.cat([self.k1(a), self.scconv(b)], dim=1))  # (N, w, H/s, W/s) unless avd
        out = self.avd_layer(out)  # (N, w, H/s, W/s)
        return self._merge(out, x)

    @torch.jit.unused
    def _trains_stacked(self) -> bool:
        if torch.jit.is_scripting() or is_fx_symbolic_tracing():  # FX cannot trace through the norms' Python
            return False
        plain_1x1s = type(self.conv1_a) is nn.Conv2d and type(self.conv1_b) is nn.Conv2d  # their weights are stacked
        return plain_1x1s and stackable_norms(self.bn1_a, self.bn1_b) and stackable_norms(self.k1[1], self.scconv.k4[1])

    @torch.jit.unused
    def _forward_stacked(self, x: torch.Tensor) -> torch.Tensor:
        """The training forward with the same numbers in fewer, wider calls (gradients equal plain autograd's).

        conv1_a and conv1_b run as one 1x1 over their stacked weights with one norm; K1's and K4's norms run as
        one norm over the concatenation of their convolutions' outputs. On a CPU, channels_last, half-width norms
        cost more per value, and the concatenation's backward would hand K1's and K4's norms channel-slice
        gradients, which batch norm's backward reads slowly. With the lean calibration (``calibrated_conv``) this
        takes SCNet-50's training step from 0.86-0.89x to 0.92-0.93x ResNet-50's throughput (docs/results/train-cpu-gap).
        The 1x1's normalised and rectified output is recomputed in backward rather than kept (``_recomputed_1x1``).
        """
        weight = torch.cat([self.conv1_a.weight, self.conv1_b.weight])  # (w, in, 1, 1)
        y = F.conv2d(x, weight)  # (N, w, H, W)
        z, again = stacked_batch_norm_again(y, [self.bn1_a, self.bn1_b])
        with self._recomputed_1x1(z, again):
            ab = self.act(z)  # (N, w, H, W)
            a, b = ab.split(ab.shape[1] // 2, dim=1)  # (N, w/2, H, W) each
            out = torch.cat([self.k1[0](a), self.scconv.calibrated_conv(b)], dim=1)  # (N, w, H/s, W/s)
        out = self.act(stacked_batch_norm(out, [self.k1[1], self.scconv.k4[1]]))
        return self._merge(self.avd_layer(out), x)  # avd: (N, w, H/s, W/s)

    @torch.jit.unused
    def _recomputed_1x1(self, z: torch.Tensor, again: Optional[Callable[[], torch.Tensor]]) -> contextlib.AbstractContextManager:
        """The scope in which ``relu(z)``, the normalised 1x1 output, is recomputed bit for bit in backward instead of
        kept (``layers/recompute.py``): one map of the 3x3 width less per block, one norm pass more."""
        if again is None or type(self.act) is not nn.ReLU or not can_recompute():
            return contextlib.nullcontext()
        return recomputed(z, lambda: again().clamp_min_(0))  # (N, w, H, W)

    def deploy_form(self, onednn: bool = True) -> "FusedSCBottleneck":
        """The eval-mode form: one merged 1x1, K1 and the fused calibration, conv3 with the sum and ReLU fused."""
        return FusedSCBottleneck(self, onednn)


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
        self._init_merge(width, planes, downsample, norm_layer, act_layer, attn_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))  # (N, w, H, W)
        out = self.act(self.bn2(self.conv2(out)))  # (N, w, H/s, W/s) unless avd
        out = self.avd_layer(out)  # (N, w, H/s, W/s)
        return self._merge(out, x)

    def deploy_form(self, onednn: bool = True) -> "FusedBottleneck":
        """The eval-mode form, folded and fused as the SC block's is (so twins are compared fairly)."""
        return FusedBottleneck(self, onednn)


# The eval-mode forms of the two blocks, built by ``deploy_form`` (norms folded; the ReLUs, the residual sum and
# the shortcut's bias inside the convolutions' calls: see ``layers/fusion.py``).
def _merge_tail(block: nn.Module, onednn: bool) -> tuple[FusedConv, Optional[nn.Module], Optional[FusedConv]]:
    """conv3 + bn3 (with the residual sum and ReLU fused unless channel attention sits in between) and the shortcut."""
    require_relu(block.act, "the block")
    has_se = not isinstance(block.se, nn.Identity)
    conv3 = FusedConv.fold(block.conv3, block.bn3, relu=not has_se, onednn=onednn)
    shortcut = None
    pool = None
    if block.downsample is not None:
        *pre, conv, norm = list(block.downsample)
        pool = nn.Sequential(*pre) if pre and not all(isinstance(m, nn.Identity) for m in pre) else None
        shortcut = FusedConv.fold(conv, norm, onednn=onednn)
    return conv3, pool, shortcut


class _FusedBottleneckBase(nn.Module):
    def _init_tail(self, block: nn.Module, onednn: bool) -> None:
        self.avd_layer = block.avd_layer
        self.conv3, self.down_pool, self.downsample = _merge_tail(block, onednn)
        self.se = block.se
        self.has_se = not isinstance(block.se, nn.Identity)

    def _tail(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = self.avd_layer(out)  # (N, w, H/s, W/s)
        if not self.has_se and self.conv3.gpu_fused(out):
            return self._tail_gpu(out, x)
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample(self.down_pool(x) if self.down_pool is not None else x)  # (N, 4p, H/s, W/s)
        if self.has_se:
            return F.relu(self.se(self.conv3(out)) + shortcut)
        return self.conv3(out, shortcut, "add")  # relu(conv3(out) + shortcut) in one call

    @torch.jit.unused
    def _tail_gpu(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """relu(conv3(out) + b3 + shortcut): the shortcut conv runs without its bias, which joins conv3's epilogue."""
        if self.downsample is None:
            return self.conv3.conv_relu_gpu(out, x)
        shortcut = self.downsample.conv_without_bias(self.down_pool(x) if self.down_pool is not None else x)  # (N, 4p, H/s, W/s)
        return self.conv3.conv_relu_gpu(out, shortcut, self.conv3.bias + self.downsample.bias)


class FusedSCBottleneck(_FusedBottleneckBase):
    """``SCBottleneck`` in eval mode: one merged 1x1 (conv1_a and conv1_b stacked), K1, the fused calibration
    with the block's ReLU inside K1 and K4, and conv3 with the residual sum and ReLU fused."""

    def __init__(self, block: SCBottleneck, onednn: bool = True) -> None:
        super().__init__()
        wa, ba = fold_conv_norm(block.conv1_a, block.bn1_a)
        wb, bb = fold_conv_norm(block.conv1_b, block.bn1_b)
        self.half = wa.shape[0]
        self.conv1 = FusedConv(torch.cat([wa, wb]), torch.cat([ba, bb]), relu=True, onednn=onednn)  # (w, in, 1, 1)
        self.k1 = FusedConv.fold(block.k1[0], block.k1[1], relu=True, onednn=onednn)  # conv3x3_norm: (conv, norm)
        self.scconv = FusedSelfCalibration(block.scconv, relu_out=True, onednn=onednn)
        self._init_tail(block, onednn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv1.gpu_fused(x):
            a, b = self._halves_gpu(x)
        else:
            ab = self.conv1(x)  # (N, w, H, W): [a | b]
            a, b = ab[:, :self.half], ab[:, self.half:]
        out = torch.cat([self.k1(a), self.scconv(b)], dim=1)  # (N, w, H/s, W/s)
        return self._tail(out, x)

    @torch.jit.unused
    def _halves_gpu(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # cuDNN reads only contiguous inputs, so channel slices of one merged output would each cost a copy:
        # on the GPU the merged 1x1 runs as its two halves instead, each output contiguous.
        width = self.conv1.weight.shape[0]
        return (self.conv1.conv_relu_gpu(x, rows=(0, self.half)),  # (N, w/2, H, W)
                self.conv1.conv_relu_gpu(x, rows=(self.half, width)))  # (N, w/2, H, W)


class FusedBottleneck(_FusedBottleneckBase):
    """The plain ``Bottleneck`` in eval mode, folded and fused the same way (so twins are compared fairly)."""

    def __init__(self, block: Bottleneck, onednn: bool = True) -> None:
        super().__init__()
        self.conv1 = FusedConv.fold(block.conv1, block.bn1, relu=True, onednn=onednn)
        self.conv2 = FusedConv.fold(block.conv2, block.bn2, relu=True, onednn=onednn)
        self._init_tail(block, onednn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._tail(self.conv2(self.conv1(x)), x)
