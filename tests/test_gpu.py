"""Checks that need a CUDA GPU: the compiled Triton gate kernel and ``deploy`` on the device.

Skipped where no GPU is visible (CI); the CPU suite checks the same kernel source through Triton's
interpreter (``test_gate_triton.py``). Run on a GPU machine with ``pytest tests/test_gpu.py``.
"""
from __future__ import annotations

import importlib

import pytest
import torch

import scnet
from seeded import rel_error, seeded_model
from test_deploy import ODD
from test_gate_triton import SHAPES, _layouts, _reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
fusion = importlib.import_module("scnet.fast.fusion")
gate = importlib.import_module("scnet.fast.gate")
CUDA = torch.device("cuda")


@pytest.fixture
def exact_convolutions():
    """cuDNN's TF32 convolutions round inputs to 10 mantissa bits: off for comparisons at float32 precision."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """Counts the calls of the real (compiled) Triton kernel made by deployed models."""
    real = gate.triton_gate_product()
    assert real is not None, "Triton could not be imported on this GPU machine"
    calls: list = []

    def counted(features, x, *rest):
        calls.append(tuple(x.shape))
        return real(features, x, *rest)

    monkeypatch.setitem(gate._TRITON, "fn", counted)
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_compiled_kernel_equals_the_formula(dtype: torch.dtype) -> None:
    from scnet.fast.gate_triton import gate_product_triton

    for (shape, pooled) in [*SHAPES, ((8, 64, 56, 56), (14, 14)), ((4, 128, 14, 14), (3, 3))]:
        gen = torch.Generator().manual_seed(sum(shape))
        calib = torch.randn(shape[0], shape[1], *pooled, generator=gen, dtype=torch.float64)
        for layout, features in _layouts(shape, gen).items():
            x = _layouts(shape, gen)[layout]
            f, xx, k = (t.to(CUDA, dtype) for t in (features, x, calib))
            out = gate_product_triton(f, xx, k)
            ref = _reference(f, xx, k)
            assert not out.isnan().any()
            if dtype == torch.float64:
                torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
            else:  # one rounding at the end (the exponential is the GPU's fast one: ~1e-7 relative)
                bound = ref.abs() * torch.finfo(dtype).eps + (1e-6 if dtype == torch.float32 else 1e-4)
                assert ((out.double() - ref).abs() <= bound).all(), (shape, layout, dtype)


@pytest.mark.parametrize("name", scnet.list_models())
def test_deploy_on_gpu_runs_the_kernel_and_matches(name: str, exact_convolutions, kernel_calls: list) -> None:
    model = seeded_model(name).to(CUDA)
    fused = scnet.deploy(model)
    n_sc = sum(isinstance(m, scnet.layers.SelfCalibration) for m in model.modules())
    for shape in (ODD, (2, 3, 224, 224)):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(CUDA)
        kernel_calls.clear()
        with torch.inference_mode():
            want, got = model(x), fused(x)
        assert len(kernel_calls) == n_sc
        assert rel_error(got, want) <= 1e-4 and torch.equal(got.argmax(1), want.argmax(1)), (name, shape)
    assert fusion._CUDNN_FUSED["ok"], "cuDNN refused a fused convolution: deploy fell back to plain ops"
    model64, fused64 = model.double(), scnet.deploy(model.double())
    x = torch.randn(ODD, generator=torch.Generator().manual_seed(2)).to(CUDA, torch.float64)
    with torch.inference_mode():
        assert rel_error(fused64(x), model64(x)) < 1e-10


def test_deploy_in_bf16_on_gpu(kernel_calls: list) -> None:
    """bf16 deploy (Triton gate) and bf16 eager against float32 eager: the fused path is no less accurate."""
    model = seeded_model("scnet50").to(CUDA)
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(3)).to(CUDA)
    with torch.inference_mode():
        ref = model(x)
        eager = model.to(torch.bfloat16)(x.bfloat16()).float()
        fused = scnet.deploy(model.float()).to(torch.bfloat16)
        got = fused(x.bfloat16().contiguous(memory_format=torch.channels_last)).float()
    err_fused, err_eager = rel_error(got, ref), rel_error(eager, ref)
    print(f"bf16 relative error vs float32: deploy {err_fused:.2e}, eager {err_eager:.2e}")
    assert kernel_calls and err_fused < 3e-2 and err_fused <= 2 * err_eager


def test_cuda_graph_replays_the_deployed_model() -> None:
    fused = scnet.deploy(seeded_model("scnet50").to(CUDA)).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(4)
    x1, x2 = (torch.randn(4, 3, 224, 224, generator=gen).to(CUDA, torch.bfloat16).contiguous(memory_format=torch.channels_last)
              for _ in range(2))
    run = scnet.cuda_graph(fused, x1)
    with torch.inference_mode():
        want1, want2 = fused(x1), fused(x2)
    torch.testing.assert_close(run(x1).clone(), want1)
    torch.testing.assert_close(run(x2), want2)  # a new input is copied in: not the recorded one's result
    with pytest.raises(ValueError, match="recorded for"):
        run(x1[:2])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_compiled_backward_kernel_equals_autograd_of_the_formula(dtype: torch.dtype) -> None:
    from scnet.fast.gate_triton import gate_product_backward_triton

    for (shape, pooled) in [*SHAPES, ((8, 64, 56, 56), (14, 14))]:
        gen = torch.Generator().manual_seed(3 + sum(shape))
        calib = torch.randn(shape[0], shape[1], *pooled, generator=gen, dtype=torch.float64)
        grad, f, x = (torch.randn(shape, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last) for _ in range(3))
        leaves = [t.clone().requires_grad_(True) for t in (f, x, calib)]
        _reference(*leaves).backward(grad)
        d_f, d_sum = gate_product_backward_triton(*(t.to(CUDA, dtype) for t in (grad, f, x, calib)))
        for got, want in ((d_f, leaves[0].grad), (d_sum, leaves[1].grad)):
            tol = 1e-12 if dtype == torch.float64 else 4 * torch.finfo(dtype).eps
            torch.testing.assert_close(got.double().cpu(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("norm", ["batchnorm", "groupnorm"])
def test_training_step_on_gpu_takes_the_kernels_and_matches(norm: str, exact_convolutions, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SelfCalibration training step on the GPU with the Triton kernels equals the same step with plain ops."""
    from scnet.layers import SelfCalibration

    torch.manual_seed(0)
    layer = scnet.fast_train(SelfCalibration(32, 32, norm_layer=norm).to(CUDA).train())
    x = torch.randn(4, 32, 28, 28, device=CUDA).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    results = []
    for devices in (("cuda",), ()):  # the kernels, then the eager ops (no device counts as a GPU)
        monkeypatch.setattr(fusion, "GPU_DEVICES", devices)
        out = layer(x)
        results.append((out, torch.autograd.grad(out.square().sum(), [x, *layer.parameters()])))
    (out, grads), (want, want_grads) = results
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
