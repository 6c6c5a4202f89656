"""The inference forms: each reference module of this package in eval mode, norms folded and element-wise work fused.

``deploy_form(module)`` gives the fused form of one module (``has_form`` says whether there is one); ``scnet.deploy``
walks a model and swaps them in. Every form here is built from ``fusion.FusedConv`` and tested equal to the
reference module it replaces.
"""
# No ``from __future__ import annotations``: TorchScript reads the fused forms' annotations as real types.
import copy
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.scconv import CONVS, SCConv, SCConv1d, SCConv3d, SelfCalibration, calibration_pool
from ..models.blocks import Bottleneck, SCBottleneck
from ..models.resnet import ResNet
from .fusion import FusedConv, fold_conv_norm, require_relu, running_eagerly
from .gate import broadcast_gate, triton_gate_product
from .training import FAST_FORMS

__all__ = ["FusedSelfCalibration", "FusedSCConv", "FusedSCBottleneck", "FusedBottleneck", "deploy_form", "has_form",
           "folded_copy", "fuse_stem"]


def folded_copy(layer: nn.Module) -> nn.Module:
    """A copy of a 1-D/3-D SC layer in eval mode whose convolutions absorb their batch norms (``fold_conv_norm``):
    the same forward, four fewer norm passes. A norm without running statistics (GroupNorm) raises ``Unfoldable``."""
    folded = copy.deepcopy(layer)
    for seq in [m for m in folded.modules() if isinstance(m, nn.Sequential) and len(m) >= 2 and isinstance(m[-2], tuple(CONVS.values()))]:
        conv, norm = seq[-2], seq[-1]
        weight, bias = fold_conv_norm(conv, norm)
        conv.weight = nn.Parameter(weight, requires_grad=False)
        conv.bias = nn.Parameter(bias, requires_grad=False)
        seq[-1] = nn.Identity()
    return folded


def _fold(seq: nn.Sequential, relu: bool = False, onednn: bool = True) -> FusedConv:
    # conv3x3_norm's Sequential(conv, norm); K2 has the pool in front: Sequential(pool, conv, norm).
    return FusedConv.fold(seq[-2], seq[-1], relu=relu, onednn=onednn)


class FusedSelfCalibration(nn.Module):
    """``SelfCalibration`` in eval mode: ``K4(K3(x) * calibration_gate(x, K2(pool(x))))`` with norms folded.

    The upsample is a broadcast, never materialised, when each pooled cell maps to an r x r block (see
    ``gate.broadcast_gate``). The product with the gate runs inside K3's convolution and ``relu_out`` (the
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
        return broadcast_gate(x, calib, self.upsample_mode, self._broadcast_r())

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


# The eval-mode forms of the two blocks (norms folded; the ReLUs, the residual sum and
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

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is None:
            return x
        return self.downsample(self.down_pool(x) if self.down_pool is not None else x)  # (N, 4p, H/s, W/s)

    def _tail(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = self.avd_layer(out)  # (N, w, H/s, W/s)
        if not self.has_se and self.conv3.gpu_fused(out):
            return self._tail_gpu(out, x)
        shortcut = self._shortcut(x)
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


def fuse_stem(model: ResNet, onednn: bool = True) -> ResNet:
    """Fuse a ResNet's stem in place (``deploy`` calls this on its copy): conv(s) + norm + ReLU as ``FusedConv``s.

    ``bn1`` and ``relu`` become identities, their work now inside the last stem convolution.
    """
    if isinstance(model.bn1, nn.Identity):  # already fused
        return model
    require_relu(model.relu, "the stem")
    if isinstance(model.conv1, nn.Sequential):  # deep stem: conv, norm, act, conv, norm, act, conv (+ bn1, relu)
        for m in model.conv1:
            if not isinstance(m, nn.Conv2d) and hasattr(m, "inplace"):
                require_relu(m, "the stem")
        convs = [m for m in model.conv1 if isinstance(m, nn.Conv2d)]
        norms = [m for m in model.conv1 if not isinstance(m, (nn.Conv2d, nn.ReLU))] + [model.bn1]
        model.conv1 = nn.Sequential(*[FusedConv.fold(c, n, relu=True, onednn=onednn) for c, n in zip(convs, norms)])
    else:
        model.conv1 = FusedConv.fold(model.conv1, model.bn1, relu=True, onednn=onednn)
    model.bn1, model.relu = nn.Identity(), nn.Identity()
    return model


def _sc_form(fused: type) -> Callable[[nn.Module, bool], nn.Module]:
    """An SC layer's form: ``fused`` (oneDNN/cuDNN/Triton) in 2-D, a copy with its norms folded in 1-D and 3-D."""
    return lambda layer, onednn: fused(layer, onednn=onednn) if layer.dims == 2 else folded_copy(layer)


# One swap rule, as ``fast_train``'s: by exact type, from this table. The reference classes (and this package's own
# subclasses: the 1-D and 3-D SC layers, the training fast forms) -> their inference forms. The blocks and the layers
# give fused modules; a ResNet is fused in place (its stem), its blocks having been swapped before. A subclass
# someone else wrote is not in the table: it keeps its own forward (``deploy`` reports it, or refuses with ``strict``).
_FORMS: dict[type, Callable[[nn.Module, bool], nn.Module]] = {
    SCBottleneck: FusedSCBottleneck,
    Bottleneck: FusedBottleneck,
    SCConv: _sc_form(FusedSCConv),
    SCConv1d: _sc_form(FusedSCConv),
    SCConv3d: _sc_form(FusedSCConv),
    SelfCalibration: _sc_form(FusedSelfCalibration),
    ResNet: fuse_stem,
}
_FORMS.update({fast: _FORMS[reference] for reference, fast in FAST_FORMS.items()})  # a model trained through fast_train


def has_form(module: nn.Module) -> bool:
    """Whether ``deploy_form`` swaps ``module``: its type is exactly one in the table (not a subclass of one)."""
    return type(module) in _FORMS


def foreign_subclass(module: nn.Module) -> Optional[str]:
    """The name of the class of ours that ``module``'s class extends, when that class is not this package's own
    (a user's subclass, which may have its own forward and is therefore never swapped); else None."""
    if has_form(module):
        return None
    return next((kind.__name__ for kind in _FORMS if isinstance(module, kind)), None)


def deploy_form(module: nn.Module, onednn: bool = True) -> nn.Module:
    """The eval-mode form of ``module`` (``has_form``). Raises ``Unfoldable`` where a norm or an activation cannot be
    fused (GroupNorm, a GELU), ``TypeError`` for a module of another type."""
    form = _FORMS.get(type(module))
    if form is None:
        raise TypeError(f"no inference form for {type(module).__name__}")
    return form(module, onednn)
