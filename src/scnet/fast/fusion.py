"""The backend pieces every fused inference form is built from: norm folding and one fused convolution.

Why: in eval mode every norm is a fixed per-channel affine map, so a convolution and the norm after it are one
convolution; the ReLU, a residual sum or a product that follows can run inside that convolution's call too
(oneDNN's post-ops on CPU, cuDNN's epilogues on a GPU) instead of as separate passes over memory. Each module
that can be fused says how, next to its own definition (``deploy_form``); they all build on ``FusedConv``.

The fused oneDNN calls are used only in eager mode on CPU, the cuDNN ones only in eager mode on CUDA. Under
``torch.compile``, ``torch.export``/ONNX, TorchScript, or for other dtypes the same modules run plain ``conv2d``
and element-wise ops (portable, still folded). Whether this PyTorch has oneDNN's fused calls is probed on
first use, never at import.
"""
# No ``from __future__ import annotations``: TorchScript reads these modules' annotations as real types.
import warnings
import weakref
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Unfoldable", "FusedConv", "GPU_DEVICES", "fold_conv_norm", "onednn_fusion_available", "require_relu", "running_eagerly"]


class Unfoldable(Exception):
    """A norm that is not a fixed per-channel affine map in eval mode."""


def fold_conv_norm(conv: nn.Conv2d, norm: Optional[nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of one convolution that computes ``norm(conv(x))`` in eval mode.

    Eval-mode batch norm is ``y = (x - mean) / sqrt(var + eps) * gamma + beta``: per output channel a scale
    ``s = gamma / sqrt(var + eps)`` and a shift, so ``W' = W * s`` and ``b' = (b - mean) * s + beta``. The
    arithmetic runs in float64 so folding adds no rounding of its own.
    """
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
    if norm is None or isinstance(norm, nn.Identity):
        return weight.to(conv.weight.dtype), bias.to(conv.weight.dtype)
    mean = getattr(norm, "running_mean", None)
    var = getattr(norm, "running_var", None)
    if mean is None or var is None or not hasattr(norm, "eps"):
        raise Unfoldable(f"{type(norm).__name__} has no running statistics to fold")
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.training:
        raise Unfoldable(f"{type(norm).__name__} is in training mode")
    gamma = norm.weight.detach().double() if getattr(norm, "weight", None) is not None else torch.ones_like(bias)
    beta = norm.bias.detach().double() if getattr(norm, "bias", None) is not None else torch.zeros_like(bias)
    scale = gamma / torch.sqrt(var.double() + norm.eps)
    folded_w = weight * scale.view(-1, *[1] * (weight.dim() - 1))  # (C_out, C_in/g, k, ...): any number of dimensions
    folded_b = (bias - mean.double()) * scale + beta
    return folded_w.to(conv.weight.dtype), folded_b.to(conv.weight.dtype)


def _probe_onednn() -> bool:
    try:
        x = torch.ones(1, 2, 3, 3)
        w = torch.ones(2, 2, 1, 1)
        y = torch.ops.mkldnn._convolution_pointwise.binary(x, x, w, None, [0, 0], [1, 1], [1, 1], 1, "add", 1.0, "relu", [], "")
        z = torch.ops.mkldnn._convolution_pointwise(x, w, None, [0, 0], [1, 1], [1, 1], 1, "relu", [], "")
        return bool(torch.all(y == 3.0)) and bool(torch.all(z == 2.0))
    except Exception:  # any build without oneDNN's fused convolutions: the portable path is used
        return False


_ONEDNN: Optional[bool] = None  # probed on first use: importing scnet runs no convolution


def onednn_fusion_available() -> bool:
    """Whether this PyTorch build offers oneDNN's fused convolution post-ops (x86/aarch64 CPU builds do)."""
    global _ONEDNN
    if _ONEDNN is None:
        _ONEDNN = _probe_onednn()
    return _ONEDNN


# Devices whose eager path takes cuDNN's fused convolutions and the Triton gate kernel; the CPU tests add "cpu",
# with Triton's interpreter and stand-ins that restate cuDNN's fused calls.
GPU_DEVICES = ("cuda",)
_CUDNN_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# oneDNN computes with weights in its own blocked layout; a plain tensor is re-laid-out on every call, which
# costs as much as the convolution itself for large filters at batch 1. The re-laid-out copy is cached per
# module and input shape, outside the module so that state_dict, deepcopy and TorchScript never see it.
_PACKED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_PACKED_SHAPES_PER_MODULE = 4


def _packed_weight(conv: "FusedConv", x: torch.Tensor) -> torch.Tensor:
    cache = _PACKED.setdefault(conv, {})
    version = 0 if conv.weight.is_inference() else conv.weight._version  # in-place edits invalidate the copy
    key = (tuple(x.shape), conv.weight.data_ptr(), version)
    packed = cache.get(key)
    if packed is None:
        if len(cache) >= _PACKED_SHAPES_PER_MODULE:
            cache.clear()
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            conv.weight.to_mkldnn(), [conv.padding] * 2, [conv.stride] * 2, [conv.dilation] * 2, conv.groups, list(x.shape))
        cache[key] = packed
    return packed


def running_eagerly() -> bool:
    """False while a tracer or compiler records the graph: Python branches on sizes would be baked into it."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
    return not (torch.compiler.is_compiling() or exporting or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


_CUDNN_FUSED = {"ok": True}  # set to False, with a warning, the first time cuDNN refuses a fused call


def _cudnn_fused_call(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], other: Optional[torch.Tensor],
                      stride: int, padding: int, dilation: int, groups: int) -> torch.Tensor:
    """``relu(conv(x, weight) + bias [+ other])`` as one cuDNN call: bias, sum and ReLU in the convolution's epilogue.

    A cuDNN without the runtime-fusion engines refuses the call: then this and every later call computes the
    same with plain ops, after one warning.
    """
    s, p, d = [stride] * 2, [padding] * 2, [dilation] * 2
    if _CUDNN_FUSED["ok"]:
        try:
            if other is None:
                return torch.cudnn_convolution_relu(x, weight, bias, s, p, d, groups)
            return torch.cudnn_convolution_add_relu(x, weight, other, 1.0, bias, s, p, d, groups)
        except RuntimeError as err:
            _CUDNN_FUSED["ok"] = False
            warnings.warn(f"deploy: cuDNN's fused convolution is not available ({str(err).splitlines()[0][:120]}); "
                          "using plain convolutions and element-wise ops", RuntimeWarning, stacklevel=2)
    y = F.conv2d(x, weight, bias, s, p, d, groups)
    return F.relu(y if other is None else y + other)


class FusedConv(nn.Module):
    """A convolution with its norm folded in and an optional ReLU, plus a fused second operand.

    ``forward(x)`` is ``act(conv(x))``; ``forward(x, other, "add")`` is ``act(conv(x) + other)``; ``"mul"``
    multiplies instead. On CPU in eager mode one oneDNN call does all of it; elsewhere plain ops.
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor, stride: int = 1, padding: int = 0, dilation: int = 1,
        groups: int = 1, relu: bool = False, onednn: bool = True,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.contiguous(memory_format=torch.channels_last), requires_grad=False)
        self.bias = nn.Parameter(bias.contiguous(), requires_grad=False)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.relu = relu
        self.onednn = onednn and onednn_fusion_available()
        self.device_kernels = onednn  # backend "auto": the fused kernels of whichever device runs the model

    @classmethod
    def fold(cls, conv: nn.Conv2d, norm: Optional[nn.Module] = None, relu: bool = False, onednn: bool = True) -> "FusedConv":
        weight, bias = fold_conv_norm(conv, norm)
        return cls(weight, bias, conv.stride[0], conv.padding[0], conv.dilation[0], conv.groups, relu, onednn)

    def _fast(self, x: torch.Tensor) -> bool:
        if torch.jit.is_scripting():
            return False
        return self._fast_eager(x)

    @torch.jit.unused
    def _fast_eager(self, x: torch.Tensor) -> bool:
        return (self.onednn and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
                and self.weight.dtype == x.dtype and running_eagerly())

    @torch.jit.unused  # TorchScript keeps the portable path; this body is never compiled
    def _onednn(self, x: torch.Tensor, other: Optional[torch.Tensor], op: str) -> torch.Tensor:
        s, p, d = [self.stride] * 2, [self.padding] * 2, [self.dilation] * 2
        weight = _packed_weight(self, x) if x.dtype == torch.float32 else self.weight
        unary = "relu" if self.relu else "none"
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise(x, weight, self.bias, p, s, d, self.groups, unary, [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, weight, self.bias, p, s, d, self.groups, op, 1.0, unary if self.relu else None, [], "")

    def gpu_fused(self, x: torch.Tensor) -> bool:
        """Whether ``x`` takes the cuDNN epilogue path: a ReLU follows, eager mode on a GPU, a cuDNN dtype."""
        if torch.jit.is_scripting():
            return False
        return self._gpu_fused_eager(x)

    @torch.jit.unused
    def _gpu_fused_eager(self, x: torch.Tensor) -> bool:
        return (self.device_kernels and self.relu and x.device.type in GPU_DEVICES and x.dtype in _CUDNN_DTYPES
                and running_eagerly())

    @torch.jit.unused
    def on_gpu(self, x: torch.Tensor) -> bool:
        """Whether a caller should take its GPU-only kernels for ``x`` (backend "auto", eager mode, a GPU device)."""
        return self.device_kernels and x.device.type in GPU_DEVICES and running_eagerly()

    @torch.jit.unused
    def conv_relu_gpu(self, x: torch.Tensor, other: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                      rows: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """``relu(conv(x) + bias [+ other])`` in one cuDNN call; ``bias`` defaults to this conv's, ``rows``
        (start, stop) picks output channels: a slice of the weight's first dimension, contiguous, so no copy."""
        weight, conv_bias = self.weight, self.bias
        if rows is not None:
            weight, conv_bias = weight[rows[0]:rows[1]], conv_bias[rows[0]:rows[1]]
        bias = conv_bias if bias is None else bias
        return _cudnn_fused_call(x, weight, bias, other, self.stride, self.padding, self.dilation, self.groups)

    def conv_without_bias(self, x: torch.Tensor) -> torch.Tensor:
        """The bare convolution, for a caller that adds the bias inside a later fused kernel."""
        return F.conv2d(x, self.weight, None, [self.stride] * 2, [self.padding] * 2, [self.dilation] * 2, self.groups)

    def forward(self, x: torch.Tensor, other: Optional[torch.Tensor] = None, op: str = "add") -> torch.Tensor:
        if self._fast(x):
            return self._onednn(x, other, op)
        if (other is None or op == "add") and self.gpu_fused(x):
            return self.conv_relu_gpu(x, other, None, None)  # all arguments: TorchScript sees no defaults here
        y = F.conv2d(x, self.weight, self.bias, [self.stride] * 2, [self.padding] * 2, [self.dilation] * 2, self.groups)
        if other is not None:
            y = y + other if op == "add" else y * other
        return F.relu(y) if self.relu else y

    def extra_repr(self) -> str:
        c_out, c_in, k = self.weight.shape[0], self.weight.shape[1] * self.groups, self.weight.shape[-1]
        return (f"{c_in}, {c_out}, kernel_size={k}, stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, relu={self.relu}, onednn={self.onednn}")


def require_relu(act: nn.Module, where: str) -> None:
    """Only ReLU is fused into a convolution's epilogue; any other activation keeps its block as it was."""
    if not isinstance(act, nn.ReLU):
        raise Unfoldable(f"{where} uses {type(act).__name__}; only ReLU is fused")
