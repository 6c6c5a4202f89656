"""The calibration gate ``sigmoid(x + Up(calib))``, as the paper writes it: its one reference definition.

Every faster form of the gate (the broadcast upsample, the memory-lean training products, the Triton kernels) lives
in ``scnet.fast.gate`` and is tested equal to ``calibration_gate``.
"""
# No ``from __future__ import annotations``: TorchScript reads these annotations as real types.
import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = ["UPSAMPLE_MODES", "upsample", "calibration_gate"]

UPSAMPLE_MODES = ("nearest", "bilinear")


def upsample(calib: torch.Tensor, size: list[int], mode: str) -> torch.Tensor:
    """``Up``: the pooled calibration back at the input's exact size (nearest, as the official code; or
    "bilinear", which in 1-D and 3-D is the linear and trilinear interpolation)."""
    if mode == "nearest":
        return F.interpolate(calib, size=size, mode="nearest")  # (N, C, *size)
    linear = "bilinear" if calib.dim() == 4 else ("linear" if calib.dim() == 3 else "trilinear")
    return F.interpolate(calib, size=size, mode=linear, align_corners=False)  # (N, C, *size)


@register_notrace_function  # FX tracing keeps the gate as one call: its size argument comes from x's shape
def calibration_gate(x: torch.Tensor, calib: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """``sigmoid(x + Up(calib))``: the calibration weights, x's shape, from the pooled and convolved ``calib``."""
    return torch.sigmoid(x + upsample(calib, list(x.shape[2:]), mode))  # (N, C, *spatial)
