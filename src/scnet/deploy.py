"""Inference fast path: ``deploy(model)`` rewrites an eval-mode model into fewer, fused kernels.

Why: SC-Conv does ~4% less arithmetic than the 3x3 convolution it replaces, but the training-time graph runs
about twice as many convolutions (half-width), a norm after each, and five element-wise passes for the
calibration gate. On a CPU those extra passes over memory, not the multiply-adds, set the speed. In eval mode
every norm is a fixed per-channel affine map, so the whole network can be rewritten with the same outputs:

- every batch norm is folded into the convolution before it (conv weight scaled, bias added);
- the two half-width 1x1 convolutions of an SC bottleneck become one full-width 1x1 (the authors' own
  equivalence) followed by channel slices;
- ReLU, the residual sum and the gate product run inside the convolution that produces their input (oneDNN's
  fused post-ops, on CPU), instead of as separate passes;
- the nearest-neighbour upsample of the calibration is a broadcast (never materialised) when the map divides
  by the pooling rate, and the sigmoid runs in place;
- activations are channels_last, the layout oneDNN computes in, so no layout conversions happen per layer;
- on a GPU, each convolution followed by a ReLU runs as one cuDNN call with the bias, the residual sum and the
  ReLU in its epilogue; the shortcut's bias moves into that epilogue too; the merged 1x1 runs as its two
  halves (cuDNN reads only contiguous inputs, so slicing its output would cost a copy); and the calibration's
  gate (K2's and K3's biases, sum, sigmoid, product) is one Triton kernel (``layers/gate_triton.py``) instead
  of five memory-bound passes. Left to plain PyTorch, the bias adds alone took a third of a GPU's time.

The fused oneDNN calls are used only in eager mode on CPU, the cuDNN and Triton ones only in eager mode on CUDA.
Under ``torch.compile``, ``torch.export``/ONNX, TorchScript, or for other dtypes the same modules run plain
``conv2d`` + element-wise ops (portable and still folded), which the compiler is free to fuse itself.
``backend="portable"`` forces that path.

Unsupported parts are never silently wrong: a model in training mode raises ``ValueError``; a norm that
cannot be folded (GroupNorm, batch norm without running statistics) leaves that block as it was, listed in
the returned model's ``deploy_report`` (``strict=True`` raises instead).
"""
# No ``from __future__ import annotations``: TorchScript reads these modules' annotations as real types.
import copy
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import SCConv, SelfCalibration
from .layers.scconv import _upsample
from .models.blocks import Bottleneck, SCBottleneck

__all__ = ["DeployReport", "FusedConv", "cuda_graph", "deploy", "fold_conv_norm", "onednn_fusion_available"]

BACKENDS = ("auto", "portable")


class _Unfoldable(Exception):
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
        raise _Unfoldable(f"{type(norm).__name__} has no running statistics to fold")
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.training:
        raise _Unfoldable(f"{type(norm).__name__} is in training mode")
    gamma = norm.weight.detach().double() if getattr(norm, "weight", None) is not None else torch.ones_like(bias)
    beta = norm.bias.detach().double() if getattr(norm, "bias", None) is not None else torch.zeros_like(bias)
    scale = gamma / torch.sqrt(var.double() + norm.eps)
    folded_w = weight * scale.view(-1, 1, 1, 1)  # (C_out, C_in/g, k, k)
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


_ONEDNN = _probe_onednn()


def onednn_fusion_available() -> bool:
    """Whether this PyTorch build offers oneDNN's fused convolution post-ops (x86/aarch64 CPU builds do)."""
    return _ONEDNN


# Devices whose eager path takes cuDNN's fused convolutions and the Triton gate kernel; the CPU tests add "cpu",
# with Triton's interpreter and stand-ins that restate cuDNN's fused calls.
_GPU_DEVICES = ("cuda",)
_CUDNN_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_TRITON_GATE: dict = {}


def _triton_gate_product():
    """The Triton gate kernel, or None where Triton cannot be imported (CPU-only installs): imported on first use."""
    if "fn" not in _TRITON_GATE:
        try:
            from .layers.gate_triton import gate_product_triton
        except Exception:  # no Triton, or a Triton that cannot initialise: the portable ops are used
            gate_product_triton = None
        _TRITON_GATE["fn"] = gate_product_triton
    return _TRITON_GATE["fn"]


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


def _running_eagerly() -> bool:
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
        self.onednn = onednn and _ONEDNN
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
                and self.weight.dtype == x.dtype and _running_eagerly())

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
        return (self.device_kernels and self.relu and x.device.type in _GPU_DEVICES and x.dtype in _CUDNN_DTYPES
                and _running_eagerly())

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


def _conv_norm(seq: nn.Sequential) -> tuple[nn.Conv2d, nn.Module]:
    # conv3x3_norm's Sequential(conv, norm); k2 has the pool in front: Sequential(pool, conv, norm).
    return seq[-2], seq[-1]


class FusedSelfCalibration(nn.Module):
    """``SelfCalibration`` in eval mode: ``K4(K3(x) * sigmoid(x + Up(K2(pool(x)))))`` with norms folded.

    The upsample is never materialised when each pooled cell maps to an r x r block (the map divides by r, or
    pools to a single cell): the sum broadcasts over a (N, C, H/r, r, W/r, r) view instead. The product with
    the gate runs inside K3's convolution and ``relu_out`` (the bottleneck's ReLU) inside K4's. On a GPU in
    eager mode (nearest upsampling), sum, sigmoid and product are one Triton kernel instead.
    """

    def __init__(self, sc: SelfCalibration, relu_out: bool = False, onednn: bool = True) -> None:
        super().__init__()
        self.pooling_r = sc.k2[0].pooling_r
        self.upsample_mode = sc.upsample_mode
        self.k2 = FusedConv.fold(*_conv_norm(sc.k2), onednn=onednn)
        self.k3 = FusedConv.fold(*_conv_norm(sc.k3), onednn=onednn)
        self.k4 = FusedConv.fold(*_conv_norm(sc.k4), relu=relu_out, onednn=onednn)

    def _may_branch_on_size(self) -> bool:
        if torch.jit.is_scripting():
            return True  # TorchScript evaluates the size test at run time
        return self._eager()

    @torch.jit.unused
    def _eager(self) -> bool:
        return _running_eagerly()

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = min(self.pooling_r, x.shape[-2]), min(self.pooling_r, x.shape[-1])
        return F.avg_pool2d(x, [kh, kw], [kh, kw])  # (N, C, max(1, H//r), max(1, W//r))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """``sigmoid(x + Up(K2(pool(x))))``, the calibration weights, (N, C, H, W)."""
        h, w = x.shape[-2], x.shape[-1]
        calib = self.k2(self._pooled(x))  # (N, C, max(1, H//r), max(1, W//r))
        ph, pw = calib.shape[-2], calib.shape[-1]
        n, c = x.shape[0], x.shape[1]
        if self.upsample_mode == "nearest" and self._may_branch_on_size() and (ph == 1 or h % self.pooling_r == 0) and (pw == 1 or w % self.pooling_r == 0):
            bh, bw = h // ph, w // pw
            # Each pooled cell covers a bh x bw block: broadcast instead of building the upsampled map.
            t = x.view(n, c, ph, bh, pw, bw) + calib.view(n, c, ph, 1, pw, 1)  # (N, C, H/bh, bh, W/bw, bw)
            return torch.sigmoid_(t).reshape(n, c, h, w)  # (N, C, H, W); a view when t kept x's layout
        return torch.sigmoid_(x + _upsample(calib, [h, w], self.upsample_mode))

    def _use_triton(self, x: torch.Tensor) -> bool:
        if torch.jit.is_scripting():
            return False
        return self._triton_eager(x)

    @torch.jit.unused
    def _triton_eager(self, x: torch.Tensor) -> bool:
        return (self.k3.device_kernels and x.device.type in _GPU_DEVICES and self.upsample_mode == "nearest"
                and _running_eagerly() and _triton_gate_product() is not None)

    @torch.jit.unused
    def _triton_product(self, x: torch.Tensor) -> torch.Tensor:
        calib = self.k2.conv_without_bias(self._pooled(x))  # (N, C, max(1, H//r), max(1, W//r))
        # K2's and K3's biases are added inside the kernel, which reads each tensor once anyway.
        return _triton_gate_product()(self.k3.conv_without_bias(x), x, calib, self.k3.bias, self.k2.bias)  # (N, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_triton(x):
            return self.k4(self._triton_product(x))  # (N, C_out, H/s, W/s)
        return self.k4(self.k3(x, self.gate(x), "mul"))  # (N, C_out, H/s, W/s)


class FusedSCConv(nn.Module):
    """``SCConv`` in eval mode: K1 and the fused calibration on the two channel halves, then one concat."""

    def __init__(self, layer: SCConv, relu_out: bool = False, onednn: bool = True) -> None:
        super().__init__()
        self.half = layer.in_channels // 2
        self.k1 = FusedConv.fold(*_conv_norm(layer.k1), relu=relu_out, onednn=onednn)
        self.scconv = FusedSelfCalibration(layer.scconv, relu_out=relu_out, onednn=onednn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = self.k1(x[:, :self.half])  # (N, C_out/2, H/s, W/s)
        return torch.cat([plain, self.scconv(x[:, self.half:])], dim=1)  # (N, C_out, H/s, W/s)


def _require_relu(act: nn.Module, where: str) -> None:
    if not isinstance(act, nn.ReLU):
        raise _Unfoldable(f"{where} uses {type(act).__name__}; only ReLU is fused")


def _merge_tail(block: nn.Module, onednn: bool) -> tuple[FusedConv, Optional[nn.Module], Optional[FusedConv]]:
    """conv3 + bn3 (with the residual sum and ReLU fused unless channel attention sits in between) and the shortcut."""
    _require_relu(block.act, "the block")
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
        self.k1 = FusedConv.fold(*_conv_norm(block.k1), relu=True, onednn=onednn)
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


@dataclass
class DeployReport:
    """What ``deploy`` rewrote, and what it left as it was and why."""

    fused: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"deploy: {len(self.fused)} modules fused, {len(self.kept)} kept as they were"]
        lines += [f"  kept {name}: {why}" for name, why in self.kept.items()]
        return "\n".join(lines)


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def _fuse_stem(model: nn.Module, onednn: bool) -> str:
    """The ResNet stem: conv(s) + bn1 + ReLU as fused convs; bn1 and relu become identities."""
    stem = model.conv1
    _require_relu(model.relu, "the stem")
    if isinstance(stem, nn.Sequential):  # deep stem: conv, norm, act, conv, norm, act, conv (+ bn1, relu)
        for m in stem:
            if not isinstance(m, nn.Conv2d) and hasattr(m, "inplace"):
                _require_relu(m, "the stem")
        convs = [m for m in stem if isinstance(m, nn.Conv2d)]
        norms = [m for m in stem if not isinstance(m, (nn.Conv2d, nn.ReLU))] + [model.bn1]
        fused = [FusedConv.fold(c, n, relu=True, onednn=onednn) for c, n in zip(convs, norms)]
        model.conv1 = nn.Sequential(*fused)
    else:
        model.conv1 = FusedConv.fold(stem, model.bn1, relu=True, onednn=onednn)
    model.bn1 = nn.Identity()
    model.relu = nn.Identity()
    return "stem"


def deploy(model: nn.Module, *, channels_last: bool = True, backend: str = "auto", strict: bool = False) -> nn.Module:
    """A fused copy of an eval-mode ``model`` for inference: same outputs (up to float rounding), faster.

    Works on every SCNet/plain-twin model of this package (stem, bottlenecks and shortcuts fused) and on any
    model holding ``SCConv`` layers, e.g. one made by ``scnet.convert`` (each SCConv fused; the rest as is).
    The input model is not modified.

    Args:
        model: a model in eval mode (``model.eval()``); training mode raises ``ValueError`` because folding
            uses the norms' running statistics, which training would go on changing.
        channels_last: store the copy's weights channels_last and feed its convolutions channels_last
            activations (the layout oneDNN and cuDNN compute in).
        backend: "auto" uses oneDNN's fused post-ops for eager CPU inference where available, plain ops
            elsewhere; "portable" always plain ops (what ONNX/TorchScript/compilers see in any case).
        strict: raise ``ValueError`` instead of keeping a block that cannot be fused (e.g. GroupNorm).

    Returns the fused model, with a ``deploy_report`` attribute (``DeployReport``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"deploy expects an nn.Module, got {type(model).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if model.training:
        raise ValueError("deploy needs a model in eval mode: it folds the norms' running statistics, "
                         "which training mode keeps updating; call model.eval() first")
    onednn = backend == "auto"
    fused_model = copy.deepcopy(model)
    report = DeployReport()

    def attempt(name: str, fuse) -> None:
        """Run ``fuse()`` (returns what was made); an unfoldable part is kept and reported, or raises if strict."""
        try:
            report.fused[name] = fuse()
        except _Unfoldable as err:
            if strict:
                raise ValueError(f"deploy cannot fuse {name}: {err}") from None
            report.kept[name] = str(err)

    def swap(name: str, make) -> str:
        _set_module(fused_model, name, make())
        return type(fused_model.get_submodule(name)).__name__

    # Outermost first; a fused block's children are no longer visited.
    for name, module in list(fused_model.named_modules()):
        if not name or any(name.startswith(done + ".") for done in (*report.fused, *report.kept)):
            continue
        if isinstance(module, SCBottleneck):
            attempt(name, lambda m=module, n=name: swap(n, lambda: FusedSCBottleneck(m, onednn)))
        elif isinstance(module, Bottleneck):
            attempt(name, lambda m=module, n=name: swap(n, lambda: FusedBottleneck(m, onednn)))
        elif isinstance(module, SCConv):
            attempt(name, lambda m=module, n=name: swap(n, lambda: FusedSCConv(m, onednn=onednn)))
        elif isinstance(module, SelfCalibration):
            attempt(name, lambda m=module, n=name: swap(n, lambda: FusedSelfCalibration(m, onednn=onednn)))
    from .models.resnet import ResNet

    if isinstance(fused_model, ResNet) and not isinstance(fused_model.bn1, nn.Identity):  # not already fused
        attempt("conv1", lambda: _fuse_stem(fused_model, onednn))
    # Convolutions follow their weight's layout, so from the first convolution on every activation is in the
    # chosen layout too, without converting the input.
    fused_model = fused_model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    fused_model.deploy_report = report
    return fused_model


def cuda_graph(model: nn.Module, example: torch.Tensor, warmup: int = 3) -> Callable[[torch.Tensor], torch.Tensor]:
    """Record one inference call of ``model`` on ``example`` as a CUDA graph; return a function that replays it.

    Why: a deployed SCNet-50 issues over 200 kernels per call, and Python issues them more slowly than a fast
    GPU runs them, at batch 1 by far and on an H200 even at batch 128. A replayed graph issues them all at once.
    The warm-up calls (before recording) let cuDNN choose its algorithms and Triton compile its kernel.

    The returned function takes inputs of exactly ``example``'s shape, dtype and device (``ValueError``
    otherwise), copies them into the recorded input and returns the recorded output, which the next call
    overwrites: clone it to keep it.
    """
    if example.device.type != "cuda":
        raise ValueError(f"cuda_graph needs a CUDA tensor, got one on {example.device}")
    static_in = example.clone()  # keeps the layout (channels_last stays channels_last)
    side = torch.cuda.Stream(example.device)
    side.wait_stream(torch.cuda.current_stream(example.device))
    with torch.inference_mode(), torch.cuda.stream(side):  # warm up off the default stream, as recording requires
        for _ in range(warmup):
            model(static_in)
    torch.cuda.current_stream(example.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        static_out = model(static_in)

    def replay(x: torch.Tensor) -> torch.Tensor:
        if x.shape != static_in.shape or x.dtype != static_in.dtype or x.device != static_in.device:
            raise ValueError(f"this graph was recorded for {tuple(static_in.shape)} {static_in.dtype} inputs on "
                             f"{static_in.device}, got {tuple(x.shape)} {x.dtype} on {x.device}")
        static_in.copy_(x)
        graph.replay()
        return static_out

    return replay
