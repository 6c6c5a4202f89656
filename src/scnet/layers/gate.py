"""The calibration gate ``sigmoid(x + Up(calib))``: its one definition, the lean training product, the fast kernel.

Every form of SC-Conv computes its gate here: the eager layer (``SelfCalibration``), its training-time product
that keeps no full-size gate for backward, the fused inference form (``FusedSelfCalibration``), and the Triton
kernel (``gate_triton.py``, imported on first use so that CPU-only installs never need Triton), which the tests
hold to ``calibration_gate``.
"""
# No ``from __future__ import annotations``: TorchScript reads these annotations as real types.
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = ["UPSAMPLE_MODES", "upsample", "calibration_gate", "calibrated_product", "triton_gate_product"]

UPSAMPLE_MODES = ("nearest", "bilinear")


def upsample(calib: torch.Tensor, size: list[int], mode: str) -> torch.Tensor:
    """``Up``: the pooled calibration back at the input's exact H x W (nearest, as the official code; or bilinear)."""
    if mode == "nearest":
        return F.interpolate(calib, size=size, mode="nearest")  # (N, C, H, W)
    return F.interpolate(calib, size=size, mode="bilinear", align_corners=False)  # (N, C, H, W)


def _tiles_exactly(h: int, w: int, ph: int, pw: int, r: int) -> bool:
    # Nearest upsampling maps each pooled cell onto one r x r block when the side is exactly r cells' worth, or
    # onto the whole side when it pooled to one cell (r = 4: PyTorch's float32 scale 1/4 is exact).
    return (ph == 1 or ph * r == h) and (pw == 1 or pw * r == w)


def calibration_gate(x: torch.Tensor, calib: torch.Tensor, mode: str = "nearest", pooling_r: int = 0) -> torch.Tensor:
    """``sigmoid(x + Up(calib))``, the calibration weights (N, C, H, W): the one definition of the gate.

    With ``pooling_r`` > 0 (the fused inference form, in eager mode or TorchScript, where branching on sizes is
    allowed) and nearest upsampling onto whole r x r blocks, ``Up`` is a broadcast over a block view instead of
    a materialised map: the same numbers, one full-size pass fewer.
    """
    n, c, h, w = x.shape[0], x.shape[1], x.shape[-2], x.shape[-1]
    ph, pw = calib.shape[-2], calib.shape[-1]
    if pooling_r > 0 and mode == "nearest" and _tiles_exactly(h, w, ph, pw, pooling_r):
        bh, bw = h // ph, w // pw
        t = x.view(n, c, ph, bh, pw, bw) + calib.view(n, c, ph, 1, pw, 1)  # (N, C, H/bh, bh, W/bw, bw)
    else:
        t = x + upsample(calib, [h, w], mode)  # (N, C, H, W)
    return torch.sigmoid_(t).reshape(n, c, h, w)  # (N, C, H, W): in place on the fresh sum; a view when t kept x's layout


class _CalibratedProduct(torch.autograd.Function):
    """``features * calibration_gate(x, calib)`` that keeps no full-size gate for backward.

    Plain autograd saves the sigmoid's output (one full-resolution tensor per SC layer) until backward; here
    only the inputs are kept (``features`` and ``x`` are saved by the neighbouring convolutions anyway, ``calib``
    is r^2 times smaller) and the gate is recomputed in backward, one cheap element-wise pass.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, x: torch.Tensor, calib: torch.Tensor, mode: str) -> torch.Tensor:
        ctx.mode = mode
        ctx.save_for_backward(features, x, calib)
        return features * calibration_gate(x, calib, mode)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        features, x, calib = ctx.saved_tensors
        with torch.enable_grad():
            calib_ = calib.detach().requires_grad_(True)
            up = upsample(calib_, list(x.shape[-2:]), ctx.mode)  # (N, C, H, W)
        # ``up`` is already at x's size: with 1 x 1 "blocks" Up is the identity, so the gate costs one add, no copy.
        gate = calibration_gate(x, up.detach(), "nearest", pooling_r=1)
        d_features = grad * gate
        d_sum = (grad * features) * (1 - gate) * gate  # d/dt sigmoid(t) = s (1 - s), in autograd's order
        (d_calib,) = torch.autograd.grad(up, calib_, d_sum)  # the upsample's adjoint: sums over each cell
        return d_features, d_sum, d_calib, None


@register_notrace_function  # FX tracing keeps it as one call
def calibrated_product(features: torch.Tensor, x: torch.Tensor, calib: torch.Tensor, mode: str) -> torch.Tensor:
    """``features * sigmoid(x + Up(calib))``, the calibrated K3 output; memory-lean when gradients are needed."""
    if not torch.jit.is_scripting():
        if torch.is_grad_enabled() and (features.requires_grad or x.requires_grad or calib.requires_grad):
            return _lean_product(features, x, calib, mode)
    return features * calibration_gate(x, calib, mode)


@torch.jit.unused
def _lean_product(features: torch.Tensor, x: torch.Tensor, calib: torch.Tensor, mode: str) -> torch.Tensor:
    return _CalibratedProduct.apply(features, x, calib, mode)


_TRITON: dict = {}


def triton_gate_product() -> Optional[Callable[..., torch.Tensor]]:
    """The Triton kernel ``gate_product_triton``, or None where Triton cannot be imported: imported on first use."""
    if "fn" not in _TRITON:
        try:
            from .gate_triton import gate_product_triton
        except Exception:  # no Triton, or a Triton that cannot initialise: the portable ops are used
            gate_product_triton = None
        _TRITON["fn"] = gate_product_triton
    return _TRITON["fn"]
