"""SCConv against a re-statement of the paper's formula, its size rule, its errors and execution modes."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import scnet
from scnet import SCConv
from seeded import seeded_input, seeded_state_dict


# ---- an independent re-statement of SC-Conv (eval mode) ---------------------------------------------------
def _conv_bn(seq: nn.Sequential, x: torch.Tensor, stride: int, dilation: int, groups: int) -> torch.Tensor:
    conv, bn = seq[-2], seq[-1]
    y = F.conv2d(x, conv.weight, None, stride, dilation, dilation, groups)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (y - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None]


def _pool(x: torch.Tensor, r: int) -> torch.Tensor:
    # r x r windows, stride r, floor; a side shorter than r is one window over the whole side.
    n, c, h, w = x.shape
    kh, kw = min(r, h), min(r, w)
    gh, gw = h // kh, w // kw
    return x[:, :, : gh * kh, : gw * kw].reshape(n, c, gh, kh, gw, kw).mean(dim=(3, 5))


def _nearest(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    rows = (torch.arange(h) * t.shape[2] // h).clamp(max=t.shape[2] - 1)
    cols = (torch.arange(w) * t.shape[3] // w).clamp(max=t.shape[3] - 1)
    return t[:, :, rows][:, :, :, cols]


def reference_scconv(m: SCConv, x: torch.Tensor, stride: int, dilation: int, groups: int, r: int) -> torch.Tensor:
    c = x.shape[1] // 2
    x2, x1 = x[:, :c], x[:, c:]  # plain half first, calibrated half second (official order)
    sc = m.scconv
    x1_up = _nearest(_conv_bn(sc.k2, _pool(x1, r), 1, dilation, groups), x1.shape[2], x1.shape[3])
    y1 = _conv_bn(sc.k4, _conv_bn(sc.k3, x1, 1, dilation, groups) * torch.sigmoid(x1 + x1_up), stride, dilation, groups)
    y2 = _conv_bn(m.k1, x2, stride, dilation, groups)
    return torch.cat([y2, y1], dim=1)


def _seeded(m: nn.Module, seed: int = 0) -> nn.Module:
    m.load_state_dict(seeded_state_dict(m.state_dict(), seed))
    return m.eval()


# ---- the formula ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w", [(16, 16), (14, 14), (7, 9), (3, 5), (1, 1)])
@pytest.mark.parametrize("stride,dilation,groups", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 1, 4)])
def test_matches_formula(h: int, w: int, stride: int, dilation: int, groups: int) -> None:
    m = _seeded(SCConv(16, stride=stride, dilation=dilation, groups=groups))
    x = seeded_input((2, 16, h, w), seed=h * 100 + w)
    with torch.no_grad():
        torch.testing.assert_close(m(x), reference_scconv(m, x, stride, dilation, groups, 4), rtol=1e-5, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 40), w=st.integers(1, 40), stride=st.integers(1, 2), r=st.integers(2, 8),
    cin=st.sampled_from([2, 4, 6, 8]), cout=st.sampled_from([2, 4, 10]), batch=st.integers(1, 2),
)
def test_property_sizes_strides_rates_widths(h: int, w: int, stride: int, r: int, cin: int, cout: int, batch: int) -> None:
    m = _seeded(SCConv(cin, cout, stride=stride, pooling_r=r), seed=r)
    x = seeded_input((batch, cin, h, w), seed=h * 41 + w)
    with torch.no_grad():
        y = m(x)
    # Same output size as the 3x3 conv it replaces.
    assert y.shape == nn.Conv2d(cin, cout, 3, stride, 1)(x).shape
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, reference_scconv(m, x, stride, 1, 1, r), rtol=1e-5, atol=1e-5)


def test_pool_rule_uses_official_floor_windows() -> None:
    # 14 px with r=4: three windows over rows 0..11, rows 12-13 ignored (the official AvgPool2d(4, 4)).
    x = torch.zeros(1, 2, 14, 14)
    x[..., 12:, :] = 100.0
    m = SCConv(4).scconv.k2[0]
    assert m(x).shape == (1, 2, 3, 3) and m(x).abs().max() == 0
    # 3 px with r=4: one window over the whole side instead of an error.
    assert torch.allclose(m(torch.arange(9.0).reshape(1, 1, 3, 3)), torch.tensor(4.0).reshape(1, 1, 1, 1))


def test_bilinear_mode_follows_the_paper() -> None:
    near = _seeded(SCConv(8))
    bil = _seeded(SCConv(8, upsample_mode="bilinear"))
    x = seeded_input((1, 8, 16, 16))
    with torch.no_grad():
        x1 = x[:, 4:]
        t = bil.scconv.k2(x1)
        up = F.interpolate(t, size=(16, 16), mode="bilinear", align_corners=False)
        y1 = bil.scconv.k4(bil.scconv.k3(x1) * torch.sigmoid(x1 + up))
        torch.testing.assert_close(bil(x)[:, 4:], y1)
        assert not torch.allclose(bil(x), near(x))


# ---- parameter budget ---------------------------------------------------------------------------------------
def _conv_params(m: nn.Module) -> int:
    return sum(p.numel() for mod in m.modules() if isinstance(mod, nn.Conv2d) for p in mod.parameters())


@pytest.mark.parametrize("c,groups", [(64, 1), (32, 2), (128, 8)])
def test_same_conv_params_as_3x3_when_in_equals_out(c: int, groups: int) -> None:
    assert _conv_params(SCConv(c, groups=groups)) == nn.Conv2d(c, c, 3, groups=groups, bias=False).weight.numel()


@pytest.mark.parametrize("cin,cout,groups", [(64, 128, 1), (128, 32, 4), (8, 2, 1)])
def test_conv_params_when_out_differs(cin: int, cout: int, groups: int) -> None:
    assert _conv_params(SCConv(cin, cout, groups=groups)) == 9 * cin * (cin + cout) // (2 * groups)


# ---- errors -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_channels=7), "in_channels must be even, got 7"),
        (dict(in_channels=8, out_channels=5), "out_channels must be even, got 5"),
        (dict(in_channels=8, pooling_r=0), "pooling_r must be an integer >= 1, got 0"),
        (dict(in_channels=8, stride=0), "stride must be an integer >= 1, got 0"),
        (dict(in_channels=8, groups=3), "groups=3 must divide both halves"),
        (dict(in_channels=8, upsample_mode="bicubic"), "upsample_mode must be one of"),
        (dict(in_channels=8, norm_layer="layernorm"), "unknown norm_layer 'layernorm'"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SCConv(**kwargs)


@pytest.mark.parametrize(
    "x,error,match",
    [
        (torch.zeros(8, 5, 5), ValueError, "4-D .* got a 3-D tensor"),
        (torch.zeros(1, 6, 5, 5), ValueError, "expects 8 input channels, got 6"),
        (torch.zeros(1, 8, 5, 5, dtype=torch.long), TypeError, "floating-point tensor, got dtype torch.int64"),
    ],
)
def test_bad_input_raises_naming_the_problem(x: torch.Tensor, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        SCConv(8)(x)


# ---- training ----------------------------------------------------------------------------------------------
def test_every_parameter_gets_a_gradient() -> None:
    m = SCConv(8, 12, stride=2).train()
    m(seeded_input((2, 8, 9, 9))).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_trains_on_a_single_value_per_channel() -> None:
    # Batch 1 on a 3x3 map: the K2 norm sees one value per channel (the official code raises there).
    m = SCConv(8).train()
    before = m.scconv.k2[2].running_mean.clone()
    y = m(seeded_input((1, 8, 3, 3)))
    y.sum().backward()
    assert torch.isfinite(y).all()
    assert torch.equal(m.scconv.k2[2].running_mean, before)  # single-value batches leave the statistics alone
    assert not torch.equal(m.k1[1].running_mean, torch.zeros(4))  # normal batches still update them


def test_group_norm_injection_leaves_no_batch_norm() -> None:
    m = SCConv(16, norm_layer=lambda c: nn.GroupNorm(2, c))
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())
    assert sum(isinstance(x, nn.GroupNorm) for x in m.modules()) == 4
    assert m(torch.randn(1, 16, 6, 6)).shape == (1, 16, 6, 6)


def test_norm_free_variant_has_biases() -> None:
    m = SCConv(8, norm_layer=None)
    assert all(c.bias is not None for c in m.modules() if isinstance(c, nn.Conv2d))
    assert m(torch.randn(1, 8, 5, 5)).shape == (1, 8, 5, 5)


# ---- execution modes ---------------------------------------------------------------------------------------
def test_autocast_bf16_on_cpu() -> None:
    m = _seeded(SCConv(16))
    x = seeded_input((2, 16, 12, 12))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), m(x).detach(), rtol=0.05, atol=0.05)


def test_channels_last_matches_contiguous() -> None:
    m = _seeded(SCConv(16, stride=2))
    x = seeded_input((2, 16, 13, 11))
    with torch.no_grad():
        ref = m(x)
        y = m.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_torchscript_matches_eager() -> None:
    m = _seeded(SCConv(16, 8, stride=2, upsample_mode="bilinear"))
    scripted = torch.jit.script(m)
    for shape in [(2, 16, 13, 11), (1, 16, 2, 3)]:
        x = seeded_input(shape)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), m(x))


def test_meta_device() -> None:
    with torch.device("meta"):
        m = SCConv(32, 64, stride=2)
        y = m(torch.empty(4, 32, 17, 17))
    assert y.device.type == "meta" and y.shape == (4, 64, 9, 9)


@pytest.mark.slow
def test_torch_compile_matches_eager() -> None:
    m = _seeded(SCConv(16))
    compiled = torch.compile(m, dynamic=True)
    for shape in [(2, 16, 16, 16), (2, 16, 13, 7)]:
        x = seeded_input(shape)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), m(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode, size, pooled", [("nearest", (8, 8), (2, 2)), ("nearest", (7, 9), (1, 2)), ("bilinear", (8, 6), (2, 1))])
def test_lean_calibrated_product_gradients(mode: str, size: tuple, pooled: tuple) -> None:
    from scnet.fast.gate import _CalibratedProduct

    g = torch.Generator().manual_seed(0)
    f, x = (torch.randn(2, 3, *size, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    c = torch.randn(2, 3, *pooled, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, d: _CalibratedProduct.apply(a, b, d, mode), (f, x, c))
    # Against the formula written out with plain autograd.
    up = torch.nn.functional.interpolate(c, size=size, mode=mode, **({} if mode == "nearest" else dict(align_corners=False)))
    want = torch.autograd.grad((f * torch.sigmoid(x + up)).sum(), (f, x, c))
    got = torch.autograd.grad(_CalibratedProduct.apply(f, x, c, mode).sum(), (f, x, c))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_lean_calibration_keeps_three_full_size_tensors_fewer() -> None:
    """In training, the fast form recomputes the gate, K3's normalised output and the product (K4's input), not keeps them."""
    from scnet.layers.gate import upsample as _upsample
    from scnet.layers.scconv import SelfCalibration

    layer = scnet.fast_train(_seeded(SelfCalibration(8)).train())
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    full, pooled = 2 * 8 * 16 * 16 * 4, 2 * 8 * 4 * 4 * 4  # float32 bytes of a full-size map and of K2's pooled map

    def saved_storages(fn) -> list[int]:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return list(seen.values())

    def plain() -> torch.Tensor:  # the same layer with the gate written out, in plain autograd
        calib = layer.k2(x)
        return layer.k4(layer.k3(x) * torch.sigmoid(x + _upsample(calib, [16, 16], "nearest")))

    plain_sizes, lean_sizes = saved_storages(plain), saved_storages(lambda: layer(x))
    assert plain_sizes.count(full) - lean_sizes.count(full) == 3
    assert sum(lean_sizes) <= sum(plain_sizes) - 3 * full + pooled  # it keeps K2's small output instead
    out, want = layer(x), plain()
    torch.testing.assert_close(out, want)
    g = torch.randn_like(out)
    params = [x, *layer.parameters()]
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(a, b)
