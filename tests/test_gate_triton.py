"""The Triton gate kernel, run on CPU by Triton's interpreter: the same kernel source a GPU compiles."""
from __future__ import annotations

import copy
import importlib
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import scnet
from scnet.models.blocks import Bottleneck, SCBottleneck
from seeded import seeded_state_dict

fusion = importlib.import_module("scnet.fast.fusion")  # the backends of every fused form
gate = importlib.import_module("scnet.fast.gate")  # the fast gates and the Triton kernel, loaded on first use

# (N, C, H, W) and the pooled (PH, PW): divisible maps, floor-pooled odd maps (the nearest rule's float scale
# decides the source cell: 18 -> 4 puts h = 9 on a float32 boundary), one-cell maps and non-square ones.
SHAPES = [((2, 6, 8, 8), (2, 2)), ((2, 6, 13, 17), (3, 4)), ((1, 4, 14, 14), (3, 3)), ((1, 4, 18, 18), (4, 4)),
          ((1, 2, 7, 5), (1, 1)), ((3, 5, 6, 9), (6, 2))]


@pytest.fixture(scope="module")
def kernel():
    """``gate_product_triton`` imported with TRITON_INTERPRET=1 (the decorator reads it), then forgotten."""
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    sys.modules.pop("scnet.fast.gate_triton", None)
    try:
        module = importlib.import_module("scnet.fast.gate_triton")
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved
    yield module.gate_product_triton
    sys.modules.pop("scnet.fast.gate_triton", None)


def _reference(features: torch.Tensor, x: torch.Tensor, calib: torch.Tensor) -> torch.Tensor:
    # The gate as the paper and the official code write it, in float64.
    up = F.interpolate(calib.double(), size=x.shape[-2:], mode="nearest")
    return features.double() * torch.sigmoid(x.double() + up)


def _layouts(shape: tuple[int, ...], gen: torch.Generator) -> dict[str, torch.Tensor]:
    n, c, h, w = shape
    wide = torch.randn(n, 2 * c, h, w, generator=gen, dtype=torch.float64)
    return {
        "nchw": torch.randn(shape, generator=gen, dtype=torch.float64),
        "channels_last": torch.randn(shape, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last),
        "slice_of_channels_last": wide.contiguous(memory_format=torch.channels_last)[:, c:],  # as deploy feeds it
        "slice_of_nchw": wide[:, :c],
    }


@pytest.mark.parametrize("shape,pooled", SHAPES)
def test_kernel_equals_the_formula_in_float64(kernel, shape: tuple, pooled: tuple) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    calib = torch.randn(shape[0], shape[1], *pooled, generator=gen, dtype=torch.float64)
    feats = _layouts(shape, gen)
    xs = _layouts(shape, gen)
    for layout, features in feats.items():
        x = xs["slice_of_channels_last"] if layout == "nchw" else xs[layout]  # mixed strides too
        out = kernel(features, x, calib)
        assert out.shape == shape and out.dtype == torch.float64
        torch.testing.assert_close(out, _reference(features, x, calib), rtol=1e-12, atol=1e-12)
        dense_cl = features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous()
        assert out.is_contiguous(memory_format=torch.channels_last if dense_cl else torch.contiguous_format)


@pytest.mark.parametrize("shape,pooled", SHAPES)
def test_reference_gate_is_the_formula_and_the_kernel_equals_it(kernel, shape: tuple, pooled: tuple) -> None:
    """The reference ``calibration_gate`` and the fast forms' ``broadcast_gate`` (broadcast or not) are the formula
    restated above, and the kernel computes the same product."""
    from scnet.layers.gate import calibration_gate

    gen = torch.Generator().manual_seed(7 + sum(shape))
    features, x = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))
    calib = torch.randn(shape[0], shape[1], *pooled, generator=gen, dtype=torch.float64)
    reference = features * calibration_gate(x, calib, "nearest")
    torch.testing.assert_close(reference, _reference(features, x, calib), rtol=1e-14, atol=1e-14)
    for broadcast in range(5):  # 0: never broadcast; else the pooling rate it may broadcast for (whenever valid)
        reference = features * gate.broadcast_gate(x, calib, "nearest", broadcast)
        torch.testing.assert_close(reference, _reference(features, x, calib), rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(kernel(features, x, calib), reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_kernel_rounds_once_in_low_precision(kernel, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    features, x = (torch.randn(2, 8, 12, 12, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last) for _ in range(2))
    calib = torch.randn(2, 8, 3, 3, generator=gen).to(dtype)
    out = kernel(features, x, calib)
    assert out.dtype == dtype
    ref = _reference(features, x, calib)
    # Sum and sigmoid in float32, one conversion to ``dtype`` at the end: within one unit in the last place of
    # the exact value (half of one when rounding to nearest, as GPUs do; Triton's interpreter truncates bf16).
    eps = torch.finfo(dtype).eps
    assert ((out.double() - ref).abs() <= ref.abs() * eps + 1e-6).all()


@pytest.mark.parametrize("terms", [("fb", "kb"), ("fb",), ("kb",), ("fs", "fb"), ("fs",)])
def test_each_optional_term_is_applied(kernel, terms: tuple) -> None:
    """The fused inference form passes both biases; the training path a norm's scale and shift on the features."""
    gen = torch.Generator().manual_seed(5)
    features, x = (torch.randn(2, 6, 13, 17, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
                   for _ in range(2))
    calib = torch.randn(2, 6, 3, 4, generator=gen, dtype=torch.float64)
    vec = {t: torch.randn(6, generator=gen, dtype=torch.float64) for t in terms}
    out = kernel(features, x, calib, features_bias=vec.get("fb"), calib_bias=vec.get("kb"), features_scale=vec.get("fs"))
    col = lambda t: vec[t].view(1, -1, 1, 1) if t in vec else 0.0  # noqa: E731
    scaled = features * vec["fs"].view(1, -1, 1, 1) if "fs" in vec else features
    torch.testing.assert_close(out, _reference(scaled + col("fb"), x, calib + col("kb")), rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def backward_kernel(kernel):
    return sys.modules["scnet.fast.gate_triton"].gate_product_backward_triton


def _reference_backward(grad, features, x, calib):
    # The gradients of the formula, by plain autograd in float64.
    f, xx, k = (t.detach().double().requires_grad_(True) for t in (features, x, calib))
    _reference(f, xx, k).backward(grad.double())
    return f.grad, xx.grad, k.grad


@pytest.mark.parametrize("shape,pooled", SHAPES)
def test_backward_kernel_equals_autograd_of_the_formula(kernel, backward_kernel, shape: tuple, pooled: tuple) -> None:
    gen = torch.Generator().manual_seed(11 + sum(shape))
    calib = torch.randn(shape[0], shape[1], *pooled, generator=gen, dtype=torch.float64)
    grads, feats, xs = (_layouts(shape, gen) for _ in range(3))
    for layout, grad in grads.items():
        features = feats["nchw" if layout == "channels_last" else layout]  # mixed strides too
        x = xs[layout]
        d_features, d_sum = backward_kernel(grad, features, x, calib)
        want_f, want_x, want_k = _reference_backward(grad, features, x, calib)
        torch.testing.assert_close(d_features, want_f, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(d_sum, want_x, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gate.upsample_adjoint(d_sum, list(calib.shape), "nearest"), want_k, rtol=1e-12, atol=1e-12)
        assert d_sum.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


def test_backward_kernel_applies_the_features_affine_map(backward_kernel) -> None:
    gen = torch.Generator().manual_seed(13)
    grad, raw, x = (torch.randn(2, 6, 12, 8, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
                    for _ in range(3))
    calib = torch.randn(2, 6, 3, 2, generator=gen, dtype=torch.float64)
    scale, shift = torch.rand(6, generator=gen, dtype=torch.float64) + 0.5, torch.randn(6, generator=gen, dtype=torch.float64)
    d_features, d_sum = backward_kernel(grad, raw, x, calib, scale, shift)
    want_f, want_x, _ = _reference_backward(grad, raw * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1), x, calib)
    torch.testing.assert_close(d_features, want_f, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d_sum, want_x, rtol=1e-12, atol=1e-12)


def _counting(fn, calls: dict, key: str):
    def wrapped(*args, **kwargs):
        calls[key] = calls.get(key, 0) + 1
        return fn(*args, **kwargs)
    return wrapped


def _cudnn_relu(x, weight, bias, stride, padding, dilation, groups):
    # What torch.cudnn_convolution_relu computes, restated with plain ops.
    return F.relu(F.conv2d(x, weight, bias, stride, padding, dilation, groups))


def _cudnn_add_relu(x, weight, z, alpha, bias, stride, padding, dilation, groups):
    # What torch.cudnn_convolution_add_relu computes, restated with plain ops.
    return F.relu(F.conv2d(x, weight, bias, stride, padding, dilation, groups) + alpha * z)


@pytest.mark.parametrize("name", ["scnet_demo", "scnet50_v1d", "scnet50_plain"])  # v1d: deep stem, pooled shortcut
def test_gpu_path_is_wired_exactly(kernel, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The GPU path on CPU: cuDNN's fused calls restated, the Triton kernel interpreted, oneDNN off.

    Every convolution must take a fused call (counted), and the model must compute what the original does:
    this checks the moved biases (K2/K3 into the kernel, the shortcut's into conv3), the split 1x1 and the gate.
    """
    calls: dict = {}
    monkeypatch.setattr(fusion, "GPU_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(fusion, "_ONEDNN", False)  # else oneDNN takes every CPU call first
    monkeypatch.setitem(gate._TRITON, "fn", _counting(kernel, calls, "gate"))
    monkeypatch.setattr(torch, "cudnn_convolution_relu", _counting(_cudnn_relu, calls, "relu"), raising=False)
    monkeypatch.setattr(torch, "cudnn_convolution_add_relu", _counting(_cudnn_add_relu, calls, "add_relu"), raising=False)
    model = scnet.create_model(name, num_classes=7).eval()
    model.load_state_dict(seeded_state_dict(model.state_dict()))
    x = torch.randn(2, 3, 40, 44, generator=torch.Generator().manual_seed(0))
    fast = scnet.deploy(model)
    with torch.inference_mode():
        expected = model(x)
        got = fast(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    sc_blocks = sum(isinstance(m, SCBottleneck) for m in model.modules())
    plain_blocks = sum(isinstance(m, Bottleneck) for m in model.modules())
    stem_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.conv1.modules())
    # Stem convs; per SC block the two 1x1 halves, K1 and K4; per plain block conv1 and conv2. conv3 adds the shortcut.
    assert calls.get("relu", 0) == stem_convs + 4 * sc_blocks + 2 * plain_blocks
    assert calls.get("add_relu", 0) == sc_blocks + plain_blocks
    assert calls.get("gate", 0) == sc_blocks
    calls.clear()
    with torch.inference_mode():
        scnet.deploy(model, backend="portable")(x)
    assert not calls  # "portable" never takes a device-specific kernel


def test_a_refused_cudnn_call_falls_back_with_one_warning(kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise RuntimeError("cuDNN: no engine for this fused graph")

    monkeypatch.setattr(fusion, "GPU_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(fusion, "_ONEDNN", False)
    monkeypatch.setitem(gate._TRITON, "fn", kernel)
    monkeypatch.setitem(fusion._CUDNN_FUSED, "ok", True)
    monkeypatch.setattr(torch, "cudnn_convolution_relu", refuse, raising=False)
    monkeypatch.setattr(torch, "cudnn_convolution_add_relu", refuse, raising=False)
    model = scnet.create_model("scnet_demo", num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    fast = scnet.deploy(model)
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="fused convolution is not available") as record:
        got = fast(x)
        expected = model(x)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    assert fusion._CUDNN_FUSED["ok"] is False
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# ---- the training path: the lean product (any norm) and the lean K3-norm + gate + K4 function (batch norm) ----
@pytest.mark.parametrize("norm, forward_calls", [("batchnorm", 2), ("groupnorm", 1)])
def test_training_gate_takes_the_kernels_and_equals_the_eager_path(kernel, backward_kernel, monkeypatch: pytest.MonkeyPatch,
                                                                   norm: str, forward_calls: int) -> None:
    """With the kernels interpreted on CPU as they would run on a GPU: the same output, gradients and statistics.

    Batch norm takes the lean K3-norm + gate + K4 function (the forward kernel runs again in backward, reading
    K3's raw output through the norm's scale and shift); group norm the lean product."""
    from scnet.layers import SelfCalibration

    torch.manual_seed(0)
    eager = SelfCalibration(6, 8, stride=2, norm_layer=norm).double().train()
    layer = scnet.fast_train(copy.deepcopy(eager))
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 6, 13, 17, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    want = eager(x)  # the reference form, plain autograd
    g = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    want_grads = torch.autograd.grad(want, [x, *eager.parameters()], g)
    calls: dict = {}
    monkeypatch.setattr(fusion, "GPU_DEVICES", ("cuda", "cpu"))
    monkeypatch.setitem(gate._TRITON, "fn", _counting(kernel, calls, "forward"))
    monkeypatch.setitem(gate._TRITON, "backward", _counting(backward_kernel, calls, "backward"))
    out = layer(x)
    grads = torch.autograd.grad(out, [x, *layer.parameters()], g)
    assert calls == {"forward": forward_calls, "backward": 1}
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(layer.buffers(), eager.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_lean_calibrated_conv_gradcheck_through_the_kernels(kernel, backward_kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fusion, "GPU_DEVICES", ("cuda", "cpu"))
    monkeypatch.setitem(gate._TRITON, "fn", kernel)
    monkeypatch.setitem(gate._TRITON, "backward", backward_kernel)
    from test_train_paths import _Norm

    norm = torch.nn.BatchNorm2d(4).double().train()
    conv = torch.nn.Conv2d(4, 4, 3, 2, 1, bias=False).double()

    def f(k3_out, x, calib, weight, bias):
        return gate.lean_calibrated_conv(k3_out, x, calib, _Norm(norm, weight, bias), conv, "nearest")

    gen = torch.Generator().manual_seed(12)
    inputs = (torch.randn(2, 4, 7, 6, generator=gen, dtype=torch.float64), torch.randn(2, 4, 7, 6, generator=gen, dtype=torch.float64),
              torch.randn(2, 4, 1, 1, generator=gen, dtype=torch.float64), torch.rand(4, generator=gen, dtype=torch.float64) + 0.5,
              torch.randn(4, generator=gen, dtype=torch.float64))
    assert torch.autograd.gradcheck(f, tuple(t.requires_grad_(True) for t in inputs))
