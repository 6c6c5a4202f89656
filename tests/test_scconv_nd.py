"""SCConv1d and SCConv3d: the formula restated with plain functional ops, the size rule over many shapes, gradients,
parameter counts, folding for deployment, conversion of 1-D/3-D models, and clear errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import scnet
from scnet import SCConv1d, SCConv3d

CONV = {1: F.conv1d, 3: F.conv3d}
POOL = {1: F.avg_pool1d, 3: F.avg_pool3d}
LAYER = {1: SCConv1d, 3: SCConv3d}


def _k(seq: nn.Sequential, x: torch.Tensor, dims: int) -> torch.Tensor:
    """One K: the convolution and the eval-mode batch norm, from the module's tensors."""
    conv, norm = seq[-2], seq[-1]
    y = CONV[dims](x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return F.batch_norm(y, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)


def reference(m: nn.Module, x: torch.Tensor, r: int) -> torch.Tensor:
    """The paper's formula: Y = [K1(X2), K4(K3(X1) * sigmoid(X1 + Up(K2(AvgPool_r(X1)))))], plain half first,
    AvgPool_r taking the whole side where it is shorter than r, Up nearest to the exact size."""
    dims = x.dim() - 2
    half = x.shape[1] // 2
    x2, x1 = x[:, :half], x[:, half:]
    window = [min(r, s) for s in x1.shape[2:]]
    t1 = POOL[dims](x1, window, window)
    up = F.interpolate(_k(m.scconv.k2, t1, dims), size=list(x1.shape[2:]), mode="nearest")
    y1 = _k(m.scconv.k4, _k(m.scconv.k3, x1, dims) * torch.sigmoid(x1 + up), dims)
    return torch.cat([_k(m.k1, x2, dims), y1], 1)


def _randomised(m: nn.Module) -> nn.Module:
    """Eval mode with norms that are not the identity (random affine parameters and running statistics)."""
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
    return m.eval()


@settings(max_examples=60)
@given(length=st.integers(1, 40), stride=st.integers(1, 2), r=st.integers(2, 8), dilation=st.integers(1, 2))
def test_scconv1d_is_the_formula_at_every_length(length: int, stride: int, r: int, dilation: int) -> None:
    torch.manual_seed(length)
    m = _randomised(SCConv1d(8, 12, stride=stride, dilation=dilation, pooling_r=r).double())
    x = torch.randn(2, 8, length, dtype=torch.float64)
    y = m(x)
    assert y.shape == (2, 12, (length - 1) // stride + 1)  # nn.Conv1d(8, 12, 3, stride, padding=dilation)'s size
    torch.testing.assert_close(y, reference(m, x, r), rtol=1e-10, atol=1e-12)


@settings(max_examples=25)
@given(d=st.integers(1, 9), h=st.integers(1, 9), w=st.integers(1, 9), stride=st.integers(1, 2), r=st.integers(2, 8))
def test_scconv3d_is_the_formula_at_every_size(d: int, h: int, w: int, stride: int, r: int) -> None:
    torch.manual_seed(d * 100 + h * 10 + w)
    m = _randomised(SCConv3d(4, 4, stride=stride, pooling_r=r, groups=2).double())
    x = torch.randn(1, 4, d, h, w, dtype=torch.float64)
    y = m(x)
    assert y.shape == (1, 4, *((s - 1) // stride + 1 for s in (d, h, w)))
    torch.testing.assert_close(y, reference(m, x, r), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dims", [1, 3])
def test_every_parameter_gets_a_gradient_and_batch_one_trains(dims: int) -> None:
    m = LAYER[dims](8, 8, stride=2).train()
    m(torch.randn(2, 8, *[7] * dims)).square().sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    # A single value per channel (batch 1, length 1): the norms use their running statistics and leave them as they
    # were, and every convolution still learns.
    m.zero_grad()
    stats = {k: v.clone() for k, v in m.state_dict().items() if "running" in k}
    m(torch.randn(1, 8, *[1] * dims)).square().sum().backward()
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in stats.items())
    convs = [n for n, mod in m.named_modules() if isinstance(mod, (nn.Conv1d, nn.Conv3d))]
    assert all(m.get_submodule(n).weight.grad is not None for n in convs) and len(convs) == 4


@pytest.mark.parametrize("dims,plain", [(1, nn.Conv1d), (3, nn.Conv3d)])
@pytest.mark.parametrize("c_in,c_out,groups", [(16, 16, 1), (16, 16, 4), (8, 24, 2)])
def test_conv_parameters_match_the_plain_convolution(dims: int, plain: type, c_in: int, c_out: int, groups: int) -> None:
    m = LAYER[dims](c_in, c_out, groups=groups)
    conv_params = sum(mod.weight.numel() for mod in m.modules() if isinstance(mod, plain))
    assert conv_params == 3 ** dims * c_in * (c_in + c_out) // (2 * groups)  # the 2-D SCConv's count, kernel 3 ** dims
    if c_in == c_out:
        assert conv_params == plain(c_in, c_out, 3, groups=groups, bias=False).weight.numel()


@pytest.mark.parametrize("dims,shape", [(1, (2, 8, 29)), (3, (2, 8, 6, 7, 9))])
def test_deploy_folds_the_norms_and_keeps_the_outputs(dims: int, shape: tuple) -> None:
    model = _randomised(nn.Sequential(LAYER[dims](8, 8), nn.ReLU(), LAYER[dims](8, 16, stride=2)))
    fused = scnet.deploy(model)
    assert fused.deploy_report.fused.keys() == {"0", "2"}
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-5)


def test_convert_replaces_1d_and_3d_convolutions_chosen_by_a_predicate() -> None:
    model = nn.Sequential(nn.Conv1d(4, 16, 3, padding=1), nn.ReLU(), nn.Conv1d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv1d(16, 32, 3, stride=2, padding=1), nn.Conv1d(32, 32, 1))
    report = scnet.convert(model, predicate=lambda name, conv: conv.in_channels >= 16 and conv.kernel_size == (3,), input_size=(4, 64))
    assert [n for n, _ in report.converted] == ["2", "4"]
    assert isinstance(model[2], SCConv1d) and isinstance(model[4], SCConv1d) and isinstance(model[0], nn.Conv1d)
    assert model(torch.randn(2, 4, 64)).shape == (2, 32, 32)
    assert report.conv_params_after < report.conv_params_before  # 16->32 as SC: 3*16*48/2 weights, not 3*16*32
    volumes = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.Conv3d(8, 8, 3, padding=2, dilation=2))
    scnet.convert(volumes, predicate=lambda name, conv: name == "1", input_size=None)
    assert isinstance(volumes[1], SCConv3d) and volumes(torch.randn(1, 2, 5, 5, 5)).shape == (1, 8, 5, 5, 5)
    with pytest.raises(ValueError, match="kernel 5, SC-Conv replaces convolutions of kernel 3"):
        scnet.convert(nn.Sequential(nn.Conv1d(8, 8, 5, padding=2)), predicate=lambda n, c: True, input_size=None)


@pytest.mark.parametrize("make,x,message", [
    (lambda: SCConv1d(8), torch.randn(1, 8, 4, 4), r"SCConv1d expects a 3-D \(N, C, L\) tensor, got a 4-D tensor of shape \[1, 8, 4, 4\]"),
    (lambda: SCConv3d(8), torch.randn(1, 8, 4, 4), r"SCConv3d expects a 5-D \(N, C, D, H, W\) tensor, got a 4-D tensor"),
    (lambda: SCConv1d(8), torch.randn(1, 6, 4), "SCConv1d expects 8 input channels, got 6"),
    (lambda: SCConv1d(8), torch.randn(1, 8, 0), r"SCConv1d got an empty input of shape \[1, 8, 0\]"),
    (lambda: SCConv1d(7), None, "in_channels must be even, got 7"),
    (lambda: scnet.SCConv(8, dims=4), None, "dims must be 1, 2 or 3"),
    (lambda: SCConv1d(8, norm_layer="frozenbn"), None, "'frozenbn' exists for 2-D inputs only"),
])
def test_bad_input_is_one_clear_error(make, x, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        m = make()
        m(x)


def test_torchscript_and_groupnorm() -> None:
    m = SCConv1d(8, 8, norm_layer="groupnorm").eval()
    x = torch.randn(2, 8, 17)
    torch.testing.assert_close(torch.jit.script(m)(x), m(x))
    assert scnet.deploy(m).deploy_report.kept  # GroupNorm has no running statistics to fold: kept as it was
