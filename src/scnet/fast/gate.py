"""The faster forms of the calibration gate ``sigmoid(x + Up(calib))`` (reference: ``scnet.layers.gate``).

The fused inference form's gate, with Up a broadcast where it tiles exactly; the two training-time forms, the
product that keeps no full-size gate for backward (any norm) and, after a plain batch norm, K3's norm + the gate +
K4's convolution as one function that keeps only K3's raw output; and the Triton kernels (``gate_triton.py``,
imported on first use so that CPU-only installs never need Triton: the product, and its backward for the training
forms on a GPU). The tests hold each to the reference ``calibration_gate``.
"""
# No ``from __future__ import annotations``: TorchScript reads these annotations as real types.
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..layers.gate import upsample

__all__ = ["upsample_adjoint", "broadcast_gate", "calibrated_product", "lean_calibrated_conv", "triton_gate_product",
           "triton_gate_backward"]


def _tiles_exactly(h: int, w: int, ph: int, pw: int, r: int) -> bool:
    # Nearest upsampling maps each pooled cell onto one r x r block when the side is exactly r cells' worth, or
    # onto the whole side when it pooled to one cell (r = 4: PyTorch's float32 scale 1/4 is exact).
    return (ph == 1 or ph * r == h) and (pw == 1 or pw * r == w)


def broadcast_gate(x: torch.Tensor, calib: torch.Tensor, mode: str = "nearest", pooling_r: int = 0) -> torch.Tensor:
    """``sigmoid(x + Up(calib))`` (the reference ``calibration_gate``) with as few full-size passes as possible.

    With ``pooling_r`` > 0 (eager mode or TorchScript, where branching on sizes is allowed) and nearest upsampling
    onto whole r x r blocks, ``Up`` is a broadcast over a block view instead of a materialised map: the same
    numbers, one full-size pass fewer. The sigmoid runs in place on the fresh sum.
    """
    if x.dim() != 4:  # 1-D and 3-D: the upsample materialised
        return torch.sigmoid_(x + upsample(calib, x.shape[2:], mode))  # (N, C, *spatial)
    n, c, h, w = x.shape[0], x.shape[1], x.shape[-2], x.shape[-1]
    ph, pw = calib.shape[-2], calib.shape[-1]
    if pooling_r > 0 and mode == "nearest" and _tiles_exactly(h, w, ph, pw, pooling_r):
        bh, bw = h // ph, w // pw
        t = x.view(n, c, ph, bh, pw, bw) + calib.view(n, c, ph, 1, pw, 1)  # (N, C, H/bh, bh, W/bw, bw)
        return torch.sigmoid_(t).reshape(n, c, h, w)  # (N, C, H, W): in place on the fresh sum; a view when t kept x's layout
    # (N, C, H, W); no reshape here, which an exported graph would keep as a node of its own
    return torch.sigmoid_(x + upsample(calib, [h, w], mode))


def upsample_adjoint(grad: torch.Tensor, calib_shape: list[int], mode: str) -> torch.Tensor:
    """The adjoint of ``upsample``: for nearest, each pooled cell's sum over its block. ATen's own backward of Up."""
    size = list(grad.shape[-2:])
    if mode == "nearest":
        return torch.ops.aten.upsample_nearest2d_backward(grad, size, calib_shape, None, None)  # (N, C, h, w)
    return torch.ops.aten.upsample_bilinear2d_backward(grad, size, calib_shape, False, None, None)  # (N, C, h, w)


def _product_grads(grad: torch.Tensor, features: torch.Tensor, gate: torch.Tensor, calib_shape: list[int], mode: str,
                   owned: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``features * sigmoid(x + Up(calib))`` for features, x and calib, from the recomputed gate.

    ``owned``: ``features`` and ``gate`` are this backward's own recomputations, so their buffers are reused
    (two full-size allocations fewer; on a CPU each fresh large tensor costs page faults).
    """
    d_features = grad * gate
    if owned:
        d_sum = features.mul_(grad).mul_(gate.addcmul_(gate, gate, value=-1))  # grad * features * (s - s^2)
    else:
        d_sum = (grad * features).mul_(1 - gate).mul_(gate)  # d/dt sigmoid(t) = s (1 - s), in autograd's order
    return d_features, d_sum, upsample_adjoint(d_sum, calib_shape, mode)


def _gate_for_backward(x: torch.Tensor, calib: torch.Tensor, mode: str, pooling_r: int = 0) -> torch.Tensor:
    if pooling_r:
        return broadcast_gate(x, calib, mode, pooling_r)  # Up as a broadcast where it tiles exactly
    # Up is materialised once here: with 1 x 1 "blocks" the gate of an x-sized map costs one add, no copy.
    return broadcast_gate(x, upsample(calib, list(x.shape[-2:]), mode), "nearest", pooling_r=1)


class _CalibratedProduct(torch.autograd.Function):
    """``features * broadcast_gate(x, calib)`` that keeps no full-size gate for backward.

    Plain autograd saves the sigmoid's output (one full-resolution tensor per SC layer) until backward; here
    only the inputs are kept (``features`` and ``x`` are saved by the neighbouring convolutions anyway, ``calib``
    is r^2 times smaller) and the gate is recomputed in backward, one cheap element-wise pass.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, x: torch.Tensor, calib: torch.Tensor, mode: str) -> torch.Tensor:
        ctx.mode, ctx.triton = mode, _triton_trains(x, mode)
        ctx.save_for_backward(features, x, calib)
        if ctx.triton:
            return triton_gate_product()(features, x, calib)
        return features * broadcast_gate(x, calib, mode)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        features, x, calib = ctx.saved_tensors
        if ctx.triton:
            d_features, d_sum = triton_gate_backward()(grad, features, x, calib)
            return d_features, d_sum, upsample_adjoint(d_sum, list(calib.shape), ctx.mode), None
        gate = _gate_for_backward(x, calib, ctx.mode)
        return *_product_grads(grad, features, gate, list(calib.shape), ctx.mode), None


@dataclass(frozen=True)
class LeanSettings:
    """What ``_LeanCalibratedConv`` takes that has no gradient: K3's norm's running statistics (updated in place) and
    constants, the gate's upsampling, and K4's convolution's geometry."""

    running_mean: torch.Tensor
    running_var: torch.Tensor
    momentum: float
    eps: float
    mode: str  # the upsampling of the gate
    pooling_r: int  # > 0: Up as a broadcast where it tiles exactly (eager mode only)
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


class _LeanCalibratedConv(torch.autograd.Function):
    """``conv(norm(k3_out) * broadcast_gate(x, calib))`` in training: K3's batch norm, the gate and K4's conv.

    Plain autograd keeps three full-size tensors of each SC layer for backward that its neighbours do not: K3's
    normalised output, the product (K4's input) and, without the lean product, the gate. Here only K3's raw
    output is kept (in place of the norm's own copy), with ``x`` and the small ``calib`` that the neighbours keep
    anyway and the batch statistics; the normalised features, the gate and the product are recomputed in
    backward, element-wise. The norm's and the convolution's gradients are ATen's own backward kernels.
    """

    @staticmethod
    def forward(ctx, k3_out: torch.Tensor, x: torch.Tensor, calib: torch.Tensor, norm_weight: torch.Tensor,
                norm_bias: torch.Tensor, conv_weight: torch.Tensor, settings: "LeanSettings") -> torch.Tensor:
        s = settings
        # Updates the running statistics in place, as F.batch_norm does; mean and invstd are the batch's.
        features, mean, invstd = torch.native_batch_norm(k3_out, norm_weight, norm_bias, s.running_mean, s.running_var, True,
                                                         s.momentum, s.eps)
        ctx.settings, ctx.triton = s, _triton_trains(x, s.mode)
        ctx.save_for_backward(k3_out, x, calib, norm_weight, norm_bias, conv_weight, mean, invstd)
        if ctx.triton:  # one pass instead of the gate's three or four
            product = triton_gate_product()(features, x, calib)
        else:
            product = features.mul_(broadcast_gate(x, calib, s.mode, s.pooling_r))  # in place: the features are not kept
        return F.conv2d(product, conv_weight, None, s.stride, s.padding, s.dilation, s.groups)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        k3_out, x, calib, norm_weight, norm_bias, conv_weight, mean, invstd = ctx.saved_tensors
        s = ctx.settings
        scale = norm_weight * invstd  # (C,): the norm as k3_out * scale + shift
        shift = norm_bias - mean * scale

        def conv_backward(product: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            d_product, d_weight, _ = torch.ops.aten.convolution_backward(
                grad, product, conv_weight, None, s.stride, s.padding, s.dilation, False, [0, 0], s.groups,
                [True, ctx.needs_input_grad[5], False],
            )
            return d_product, d_weight

        if ctx.triton:  # the features never materialised: the kernels apply the norm's scale and shift as they read
            d_product, d_conv_weight = conv_backward(triton_gate_product()(k3_out, x, calib, features_bias=shift, features_scale=scale))
            d_features, d_x = triton_gate_backward()(d_product, k3_out, x, calib, scale, shift)
            d_calib = upsample_adjoint(d_x, list(calib.shape), s.mode)
        else:
            shape = (1, -1, 1, 1)
            features = torch.addcmul(shift.view(shape), k3_out, scale.view(shape))  # (N, C, H, W)
            gate = _gate_for_backward(x, calib, s.mode, s.pooling_r)
            d_product, d_conv_weight = conv_backward(features * gate)
            d_features, d_x, d_calib = _product_grads(d_product, features, gate, list(calib.shape), s.mode, owned=True)
        d_k3, d_norm_weight, d_norm_bias = torch.ops.aten.native_batch_norm_backward(
            d_features, k3_out, norm_weight, None, None, mean, invstd, True, s.eps,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4]],
        )
        return d_k3, d_x, d_calib, d_norm_weight, d_norm_bias, d_conv_weight, None


def lean_calibrated_conv(k3_out: torch.Tensor, x: torch.Tensor, calib: torch.Tensor, norm: torch.nn.BatchNorm2d,
                         conv: torch.nn.Conv2d, mode: str, pooling_r: int = 0) -> torch.Tensor:
    """``conv(norm(k3_out) * sigmoid(x + Up(calib)))`` for a training-mode batch norm (see ``_LeanCalibratedConv``).

    The caller has checked the norm with ``stackable_norms`` and counts its batch; ``conv`` has no bias. With
    ``pooling_r`` (eager mode only: the test is on sizes) Up is a broadcast where it tiles exactly.
    """
    settings = LeanSettings(norm.running_mean, norm.running_var, norm.momentum, norm.eps, mode, pooling_r, conv.stride,
                            conv.padding, conv.dilation, conv.groups)
    return _LeanCalibratedConv.apply(k3_out, x, calib, norm.weight, norm.bias, conv.weight, settings)


def calibrated_product(features: torch.Tensor, x: torch.Tensor, calib: torch.Tensor, mode: str) -> torch.Tensor:
    """``features * sigmoid(x + Up(calib))``, the calibrated K3 output; memory-lean when gradients are needed (2-D)."""
    if torch.is_grad_enabled() and (features.requires_grad or x.requires_grad or calib.requires_grad) and x.dim() == 4:
        return _CalibratedProduct.apply(features, x, calib, mode)
    return features * broadcast_gate(x, calib, mode)


_TRITON: dict = {}


def _load_triton() -> None:
    if "fn" not in _TRITON:
        try:
            from .gate_triton import gate_product_backward_triton, gate_product_triton
        except Exception:  # no Triton, or a Triton that cannot initialise: the portable ops are used
            gate_product_triton = gate_product_backward_triton = None
        _TRITON["fn"], _TRITON["backward"] = gate_product_triton, gate_product_backward_triton


def triton_gate_product() -> Optional[Callable[..., torch.Tensor]]:
    """The Triton kernel ``gate_product_triton``, or None where Triton cannot be imported: imported on first use."""
    _load_triton()
    return _TRITON["fn"]


def triton_gate_backward() -> Optional[Callable[..., tuple[torch.Tensor, torch.Tensor]]]:
    """The Triton kernel ``gate_product_backward_triton``, or None: imported on first use, with the forward one."""
    _load_triton()
    return _TRITON.get("backward")


def _triton_trains(x: torch.Tensor, mode: str) -> bool:
    """Whether a training gate runs as the Triton kernels: on a GPU, nearest Up, eagerly (compilers fuse it themselves)."""
    from . import fusion  # read at call time: the tests widen GPU_DEVICES to run the kernels interpreted on CPU

    return (mode == "nearest" and x.device.type in fusion.GPU_DEVICES and fusion.running_eagerly()
            and triton_gate_product() is not None and triton_gate_backward() is not None)
