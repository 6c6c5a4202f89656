"""The calibration gate product ``features * sigmoid(x + Up_nearest(calib))`` as one Triton kernel.

Optionally with the per-channel biases of the two convolutions that produce ``features`` and ``calib``.

Why: in eager PyTorch the gate costs four element-wise passes over full-resolution tensors (upsample or
broadcast add, sigmoid, product), each reading and writing memory, while the arithmetic is trivial. On a GPU
such passes are bound by memory bandwidth, so one kernel that reads ``features`` and ``x`` once, the r^2-times
smaller ``calib`` from cache, and writes the product once moves about a third of the bytes. It also computes
the sum and the sigmoid in float32 and rounds once, where the eager ops round after every step in bf16/fp16.

This module imports Triton at import time; ``scnet.layers.gate.triton_gate_product`` imports it only when the
kernel is first used, so CPU-only installs never need Triton. The tests hold it to ``gate.calibration_gate``.
With ``TRITON_INTERPRET=1`` set before the import, Triton runs the same kernel on CPU tensors (slowly), which
is how the tests check it without a GPU.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import triton
import triton.language as tl

__all__ = ["gate_product_triton"]


@triton.jit
def _gate_product_kernel(ptrs, sizes, scales, strides, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr,
                         BLOCK_C: tl.constexpr):
    # Arguments grouped in tuples, flattened by Triton in this order (each element specialised as a separate
    # argument would be, stride 1 included): the six pointers, the sizes, the two scales, and the (n, c, h, w)
    # strides of features, x, calib and out.
    feat_ptr, x_ptr, calib_ptr, out_ptr, fbias_ptr, kbias_ptr = ptrs
    P, C, H, W, PH, PW = sizes
    scale_h, scale_w = scales
    sf, sx, sk, so = strides
    sf_n, sf_c, sf_h, sf_w = sf
    sx_n, sx_c, sx_h, sx_w = sx
    sk_n, sk_c, sk_h, sk_w = sk
    so_n, so_c, so_h, so_w = so
    # A tile of BLOCK_P pixels x BLOCK_C channels. The pixel -> (n, h, w) divisions happen once per pixel, in
    # 32-bit, not once per element: 64-bit division is slow enough on a GPU to outweigh the memory traffic.
    # In channels_last the channel stride is 1 (Triton specialises it), so loads and stores along C vectorise.
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    w = p % W
    h = (p // W) % H
    n = p // (W * H)
    # PyTorch's nearest rule: src = min(floor(dst * (in / out)), in - 1), the scale a float32 quotient.
    ph = tl.minimum(tl.floor(h.to(tl.float32) * scale_h).to(tl.int32), PH - 1)
    pw = tl.minimum(tl.floor(w.to(tl.float32) * scale_w).to(tl.int32), PW - 1)
    n64, h64, w64, c64 = n.to(tl.int64), h.to(tl.int64), w.to(tl.int64), c.to(tl.int64)
    mask = (p < P)[:, None] & (c < C)[None, :]
    f_off = (n64 * sf_n + h64 * sf_h + w64 * sf_w)[:, None] + (c64 * sf_c)[None, :]  # (BLOCK_P, BLOCK_C)
    x_off = (n64 * sx_n + h64 * sx_h + w64 * sx_w)[:, None] + (c64 * sx_c)[None, :]
    k_off = (n64 * sk_n + ph.to(tl.int64) * sk_h + pw.to(tl.int64) * sk_w)[:, None] + (c64 * sk_c)[None, :]
    o_off = (n64 * so_n + h64 * so_h + w64 * so_w)[:, None] + (c64 * so_c)[None, :]
    f = tl.load(feat_ptr + f_off, mask=mask).to(ACC)
    xv = tl.load(x_ptr + x_off, mask=mask).to(ACC)
    kv = tl.load(calib_ptr + k_off, mask=mask).to(ACC)
    if HAS_BIAS:  # the biases of the convolutions that made features and calib, per channel
        f += tl.load(fbias_ptr + c, mask=c < C).to(ACC)[None, :]
        kv += tl.load(kbias_ptr + c, mask=c < C).to(ACC)[None, :]
    out = f / (1.0 + tl.exp(-(xv + kv)))  # f * sigmoid(x + Up(calib)); ACC: float64 for float64, else float32
    tl.store(out_ptr + o_off, out.to(out_ptr.dtype.element_ty), mask=mask)


def _nearest_scale(in_size: int, out_size: int) -> float:
    # Exactly the float32 quotient PyTorch's upsample_nearest2d uses, so the kernel picks the same source cell.
    return float(np.float32(in_size) / np.float32(out_size))


def gate_product_triton(features: torch.Tensor, x: torch.Tensor, calib: torch.Tensor,
                        features_bias: Optional[torch.Tensor] = None, calib_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(features + fb) * sigmoid(x + interpolate(calib + kb, size=x.shape[-2:], mode="nearest"))`` in one pass.

    ``features`` and ``x``: (N, C, H, W), any strides (channel slices of a channels_last tensor included);
    ``calib``: (N, C, PH, PW); the optional per-channel biases ``fb`` and ``kb`` (C,) come together or not at
    all. The output has ``features``' memory format and dtype.
    """
    if (features_bias is None) != (calib_bias is None):
        raise ValueError("give both biases (features_bias and calib_bias) or neither")
    n, c, h, w = x.shape
    ph, pw = calib.shape[-2:]
    channels_last = features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous()
    out = torch.empty_like(features, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    pixels = n * h * w
    if out.numel() == 0:
        return out
    if pixels >= 2**31:
        raise ValueError(f"gate_product_triton indexes pixels in 32 bits; N*H*W = {pixels} is too many")
    # About 2048 elements a tile; the contiguous dimension (C in channels_last, W in NCHW) the long side.
    block_c = min(triton.next_power_of_2(c), 64) if channels_last else 4
    block_p = 2048 // block_c
    grid = (triton.cdiv(pixels, block_p), triton.cdiv(c, block_c))
    ptrs = (features, x, calib, out, features if features_bias is None else features_bias, features if calib_bias is None else calib_bias)
    strides = (features.stride(), x.stride(), calib.stride(), out.stride())
    _gate_product_kernel[grid](
        ptrs, (pixels, c, h, w, ph, pw), (_nearest_scale(ph, h), _nearest_scale(pw, w)), strides,
        HAS_BIAS=features_bias is not None, ACC=tl.float64 if features.dtype == torch.float64 else tl.float32,
        BLOCK_P=block_p, BLOCK_C=block_c,
    )
    return out
