"""The calibration gate product ``features * sigmoid(x + Up_nearest(calib))`` as one Triton kernel.

Optionally with the per-channel biases of the two convolutions that produce ``features`` and ``calib``, or with a
training norm's scale and shift applied to ``features``; and its backward, also one kernel.

Why: in eager PyTorch the gate costs four element-wise passes over full-resolution tensors (upsample or
broadcast add, sigmoid, product), each reading and writing memory, while the arithmetic is trivial. On a GPU
such passes are bound by memory bandwidth, so one kernel that reads ``features`` and ``x`` once, the r^2-times
smaller ``calib`` from cache, and writes the product once moves a fraction of the bytes. It also computes
the sum and the sigmoid in float32 and rounds once, where the eager ops round after every step in bf16/fp16.

This module imports Triton at import time; ``scnet.fast.gate.triton_gate_product`` imports it only when the
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

__all__ = ["gate_product_triton", "gate_product_backward_triton"]


@triton.jit
def _tile(sizes, scales, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """The tile of BLOCK_P pixels x BLOCK_C channels this program handles: its mask, its channels, each pixel's
    (n, h, w) and the pooled cell (ph, pw) it reads."""
    P, C, H, W, PH, PW = sizes
    scale_h, scale_w = scales
    # The pixel -> (n, h, w) divisions happen once per pixel, in 32-bit, not once per element: 64-bit division is
    # slow enough on a GPU to outweigh the memory traffic. In channels_last the channel stride is 1 (Triton
    # specialises it), so loads and stores along C vectorise.
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    w = p % W
    h = (p // W) % H
    n = p // (W * H)
    # PyTorch's nearest rule: src = min(floor(dst * (in / out)), in - 1), the scale a float32 quotient.
    ph = tl.minimum(tl.floor(h.to(tl.float32) * scale_h).to(tl.int32), PH - 1)
    pw = tl.minimum(tl.floor(w.to(tl.float32) * scale_w).to(tl.int32), PW - 1)
    mask = (p < P)[:, None] & (c < C)[None, :]
    return mask, c, n.to(tl.int64), h.to(tl.int64), w.to(tl.int64), ph.to(tl.int64), pw.to(tl.int64)


@triton.jit
def _offsets(n, h, w, c, strides):
    s_n, s_c, s_h, s_w = strides
    return (n * s_n + h * s_h + w * s_w)[:, None] + (c.to(tl.int64) * s_c)[None, :]  # (BLOCK_P, BLOCK_C)


@triton.jit
def _load_terms(ptrs, vectors, strides, tile, C, TERMS: tl.constexpr, ACC: tl.constexpr):
    """features (times its per-channel scale, plus its bias), x and Up(calib) (plus its bias), in ACC.

    ptrs: features, x, calib; vectors: the features' scale and bias and calib's bias; strides: of the three;
    TERMS: which of the three vectors apply (constants, so an unused term costs nothing)."""
    feat_ptr, x_ptr, calib_ptr = ptrs
    fscale_ptr, fbias_ptr, kbias_ptr = vectors
    sf, sx, sk = strides
    mask, c, n, h, w, ph, pw = tile
    f = tl.load(feat_ptr + _offsets(n, h, w, c, sf), mask=mask).to(ACC)
    xv = tl.load(x_ptr + _offsets(n, h, w, c, sx), mask=mask).to(ACC)
    kv = tl.load(calib_ptr + _offsets(n, ph, pw, c, sk), mask=mask).to(ACC)
    if TERMS[0]:  # a training norm's affine map, (k3_out - mean) * invstd * weight + bias = k3_out * scale + shift
        f *= tl.load(fscale_ptr + c, mask=c < C).to(ACC)[None, :]
    if TERMS[1]:  # the per-channel biases of the convolutions that made features and calib
        f += tl.load(fbias_ptr + c, mask=c < C).to(ACC)[None, :]
    if TERMS[2]:
        kv += tl.load(kbias_ptr + c, mask=c < C).to(ACC)[None, :]
    return f, xv, kv


@triton.jit
def _gate_product_kernel(ptrs, sizes, scales, strides, TERMS: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr,
                         BLOCK_C: tl.constexpr):
    # Arguments grouped in tuples, flattened by Triton in this order (each element specialised as a separate
    # argument would be, stride 1 included): the seven pointers, the sizes, the two scales, and the (n, c, h, w)
    # strides of features, x, calib and out; TERMS (features' scale, features' bias, calib's bias) are constants.
    feat_ptr, x_ptr, calib_ptr, out_ptr, fscale_ptr, fbias_ptr, kbias_ptr = ptrs
    sf, sx, sk, so = strides
    tile = _tile(sizes, scales, BLOCK_P, BLOCK_C)
    mask, c, n, h, w, ph, pw = tile
    f, xv, kv = _load_terms((feat_ptr, x_ptr, calib_ptr), (fscale_ptr, fbias_ptr, kbias_ptr), (sf, sx, sk), tile, sizes[1],
                            TERMS, ACC)
    out = f / (1.0 + tl.exp(-(xv + kv)))  # f * sigmoid(x + Up(calib)); ACC: float64 for float64, else float32
    tl.store(out_ptr + _offsets(n, h, w, c, so), out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gate_product_backward_kernel(ptrs, sizes, scales, strides, TERMS: tl.constexpr, ACC: tl.constexpr,
                                  BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # ptrs: grad, features, x, calib, d_features (out), d_sum (out), the features' scale and bias; strides of the
    # first six; TERMS as the forward kernel's (calib's bias never applies). d_sum = grad * f * s * (1 - s) is the
    # gradient of x and, summed over each cell, of calib.
    g_ptr, feat_ptr, x_ptr, calib_ptr, df_ptr, ds_ptr, fscale_ptr, fbias_ptr = ptrs
    sg, sf, sx, sk, sdf, sds = strides
    tile = _tile(sizes, scales, BLOCK_P, BLOCK_C)
    mask, c, n, h, w, ph, pw = tile
    f, xv, kv = _load_terms((feat_ptr, x_ptr, calib_ptr), (fscale_ptr, fbias_ptr, fbias_ptr), (sf, sx, sk), tile, sizes[1],
                            TERMS, ACC)
    g = tl.load(g_ptr + _offsets(n, h, w, c, sg), mask=mask).to(ACC)
    s = 1.0 / (1.0 + tl.exp(-(xv + kv)))
    tl.store(df_ptr + _offsets(n, h, w, c, sdf), (g * s).to(df_ptr.dtype.element_ty), mask=mask)
    tl.store(ds_ptr + _offsets(n, h, w, c, sds), (g * f * s * (1.0 - s)).to(ds_ptr.dtype.element_ty), mask=mask)


def _nearest_scale(in_size: int, out_size: int) -> float:
    # Exactly the float32 quotient PyTorch's upsample_nearest2d uses, so the kernel picks the same source cell.
    return float(np.float32(in_size) / np.float32(out_size))


def _layout(t: torch.Tensor) -> torch.memory_format:
    dense_cl = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if dense_cl else torch.contiguous_format


def _launch(kernel, like: torch.Tensor, x: torch.Tensor, calib: torch.Tensor, ptrs: tuple, tensors: tuple, **flags) -> None:
    """Launch ``kernel`` over the pixels and channels of ``x``; ``tensors``: the full-size ones, for their strides."""
    n, c, h, w = x.shape
    ph, pw = calib.shape[-2:]
    pixels = n * h * w
    if pixels >= 2**31:
        raise ValueError(f"the Triton gate kernels index pixels in 32 bits; N*H*W = {pixels} is too many")
    # About 2048 elements a tile; the contiguous dimension (C in channels_last, W in NCHW) the long side.
    block_c = min(triton.next_power_of_2(c), 64) if _layout(like) == torch.channels_last else 4
    block_p = 2048 // block_c
    grid = (triton.cdiv(pixels, block_p), triton.cdiv(c, block_c))
    acc = tl.float64 if like.dtype == torch.float64 else tl.float32
    kernel[grid](ptrs, (pixels, c, h, w, ph, pw), (_nearest_scale(ph, h), _nearest_scale(pw, w)),
                 tuple(t.stride() for t in tensors), ACC=acc, BLOCK_P=block_p, BLOCK_C=block_c, **flags)


def gate_product_triton(features: torch.Tensor, x: torch.Tensor, calib: torch.Tensor,
                        features_bias: Optional[torch.Tensor] = None, calib_bias: Optional[torch.Tensor] = None,
                        features_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(features * fs + fb) * sigmoid(x + interpolate(calib + kb, size=x.shape[-2:], mode="nearest"))`` in one pass.

    ``features`` and ``x``: (N, C, H, W), any strides (channel slices of a channels_last tensor included);
    ``calib``: (N, C, PH, PW); the per-channel ``fs``, ``fb`` and ``kb`` (C,) are each optional (the fused
    inference form passes both biases, the training path a norm's scale and shift). The output has
    ``features``' memory format and dtype.
    """
    out = torch.empty_like(features, memory_format=_layout(features))
    if out.numel() == 0:
        return out
    ptrs = (features, x, calib, out, *(features if t is None else t for t in (features_scale, features_bias, calib_bias)))
    terms = (features_scale is not None, features_bias is not None, calib_bias is not None)
    _launch(_gate_product_kernel, features, x, calib, ptrs, (features, x, calib, out), TERMS=terms)
    return out


def gate_product_backward_triton(grad: torch.Tensor, features: torch.Tensor, x: torch.Tensor, calib: torch.Tensor,
                                 features_scale: Optional[torch.Tensor] = None,
                                 features_bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward of ``gate_product_triton`` (no calib bias) in one pass: ``(grad * s, grad * f * s * (1 - s))``.

    ``s`` is the gate recomputed and ``f = features * fs + fb``. The first is the gradient of ``f``, the second of
    ``x``; summed over each pooled cell (``gate.upsample_adjoint``) it is the gradient of ``calib``. Both come in
    ``grad``'s memory format; the first in ``features``' dtype, the second in ``x``'s.
    """
    d_features = torch.empty_like(grad, dtype=features.dtype, memory_format=_layout(grad))
    d_sum = torch.empty_like(grad, dtype=x.dtype, memory_format=_layout(grad))
    if grad.numel() == 0:
        return d_features, d_sum
    ptrs = (grad, features, x, calib, d_features, d_sum, *(features if t is None else t for t in (features_scale, features_bias)))
    terms = (features_scale is not None, features_bias is not None, False)
    _launch(_gate_product_backward_kernel, grad, x, calib, ptrs, (grad, features, x, calib, d_features, d_sum), TERMS=terms)
    return d_features, d_sum
