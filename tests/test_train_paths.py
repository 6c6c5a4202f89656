"""The training fast forms (``scnet.fast_train``: stacked norms, the lean calibration) against plain autograd.

In training the SC bottleneck's fast form runs conv1_a/conv1_b as one convolution with one norm, K1's and K4's
norms as one, and K3's norm, the gate and K4's convolution as one autograd function that recomputes what it does
not keep. Here the block is re-stated with plain PyTorch ops, one norm per layer as the official code has them,
and the outputs, every gradient and the running statistics of both the fast and the reference form must agree.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import scnet
import scnet.fast.training as training
from scnet.fast.gate import lean_calibrated_conv
from scnet.fast.norm import stackable_norms, stacked_batch_norm
from scnet.fast.training import FastSCBottleneck, FastSelfCalibration, _trains_lean
from scnet.models import SCBottleneck


# ---- an independent re-statement of the SC bottleneck in training mode --------------------------------------
def _bn(x: torch.Tensor, norm: nn.BatchNorm2d) -> torch.Tensor:
    if norm.training:
        norm.num_batches_tracked.add_(1)
    return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, norm.training, norm.momentum, norm.eps)


def _conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def reference_block(blk: SCBottleneck, x: torch.Tensor) -> torch.Tensor:
    """The official bottleneck's training forward, op by op (``blk`` is a copy: its norms' statistics move)."""
    a = F.relu(_bn(_conv(x, blk.conv1_a), blk.bn1_a))
    b = F.relu(_bn(_conv(x, blk.conv1_b), blk.bn1_b))
    plain = _bn(_conv(a, blk.k1[0]), blk.k1[1])
    sc = blk.scconv
    r = sc.k2[0].pooling_r
    kh, kw = min(r, b.shape[2]), min(r, b.shape[3])
    calib = _bn(_conv(F.avg_pool2d(b, (kh, kw), (kh, kw)), sc.k2[1]), sc.k2[2])
    gate = torch.sigmoid(b + F.interpolate(calib, size=b.shape[-2:], mode="nearest"))
    calibrated = _bn(_conv(_bn(_conv(b, sc.k3[0]), sc.k3[1]) * gate, sc.k4[0]), sc.k4[1])
    out = blk.avd_layer(F.relu(torch.cat([plain, calibrated], 1)))
    out = blk.se(_bn(_conv(out, blk.conv3), blk.bn3))
    return F.relu(out + (x if blk.downsample is None else blk.downsample(x)))


def _block(inplanes: int, planes: int, stride: int = 1, **kw) -> FastSCBottleneck:
    """A seeded SC bottleneck in its training fast form (``scnet.fast_train(block, False)`` gives the reference)."""
    down = None
    if stride != 1 or inplanes != planes * 4:
        down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
    torch.manual_seed(0)
    blk = SCBottleneck(inplanes, planes, stride, down, **kw).double().train()
    for m in blk.modules():  # norms away from the identity, so that a wrong statistic shows
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
            nn.init.uniform_(m.running_var, 0.5, 2.0)
    return scnet.fast_train(blk)


BLOCKS = [
    dict(inplanes=32, planes=8),
    dict(inplanes=32, planes=16, stride=2),
    dict(inplanes=32, planes=16, stride=2, avd=True),
    dict(inplanes=64, planes=16, cardinality=2, base_width=8),
    dict(inplanes=32, planes=8, attn_layer="se"),
    dict(inplanes=32, planes=8, dilation=2, pooling_r=2),
]


@pytest.mark.parametrize("kwargs", BLOCKS)
@pytest.mark.parametrize("shape, channels_last", [((3, 13, 15), False), ((2, 16, 16), True), ((2, 3, 2), False)])
@pytest.mark.parametrize("fast", [True, False], ids=["fast form", "reference form"])
def test_block_training_step_equals_plain_autograd(kwargs: dict, shape: tuple, channels_last: bool, fast: bool) -> None:
    blk = scnet.fast_train(_block(**kwargs), enable=fast)
    assert type(blk) is (FastSCBottleneck if fast else SCBottleneck)
    ref = copy.deepcopy(blk)
    n, h, w = shape
    x = torch.randn(n, kwargs["inplanes"], h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    if fast:
        assert blk._trains_stacked() and _trains_lean(blk.scconv, x[:, :1])
    out, want = blk(x), reference_block(ref, x)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *blk.parameters()], g)
    exp = torch.autograd.grad(want, [x, *ref.parameters()], g)
    for name, a, b in zip(["x", *dict(blk.named_parameters())], got, exp):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m: f"gradient of {name}: {m}")
    for (name, a), b in zip(blk.named_buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"buffer {name}: {m}")


@pytest.mark.parametrize("kwargs", [BLOCKS[0], BLOCKS[1]])
def test_block_gradcheck_in_float64(kwargs: dict) -> None:
    blk = _block(**{**kwargs, "inplanes": 16, "planes": kwargs["planes"] // 2})
    names = [k for k, _ in blk.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in blk.parameters()]
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)

    def f(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(blk, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True)


# (size, pooled, r): Up materialised (7 x 9 does not tile by 4 x 4 cells), or a broadcast over exact blocks.
@pytest.mark.parametrize("size, pooled, r", [((7, 9), (1, 2), 0), ((8, 12), (2, 3), 4)])
@pytest.mark.parametrize("stride, dilation, groups, mode", [(1, 1, 1, "nearest"), (2, 2, 2, "nearest"), (1, 1, 1, "bilinear")])
def test_lean_calibrated_conv_gradcheck(stride: int, dilation: int, groups: int, mode: str, size: tuple, pooled: tuple, r: int) -> None:
    g = torch.Generator().manual_seed(3)
    norm = nn.BatchNorm2d(4).double().train()
    conv = nn.Conv2d(4, 6, 3, stride, dilation, dilation, groups, bias=False).double()

    def f(k3_out, x, calib, weight, bias, conv_weight):
        # The function reads the modules' attributes: hand it the inputs in their place, for gradcheck to perturb.
        return lean_calibrated_conv(k3_out, x, calib, _Norm(norm, weight, bias), _Conv(conv, conv_weight), mode, r)

    inputs = (torch.randn(2, 4, *size, dtype=torch.float64, generator=g), torch.randn(2, 4, *size, dtype=torch.float64, generator=g),
              torch.randn(2, 4, *pooled, dtype=torch.float64, generator=g), torch.rand(4, dtype=torch.float64, generator=g) + 0.5,
              torch.randn(4, dtype=torch.float64, generator=g), torch.randn(6, 4 // groups, 3, 3, dtype=torch.float64, generator=g))
    assert torch.autograd.gradcheck(f, tuple(t.requires_grad_(True) for t in inputs))


class _Norm:
    """A batch norm's attributes with the weight and bias replaced (what ``lean_calibrated_conv`` reads)."""

    def __init__(self, norm: nn.BatchNorm2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.momentum, self.eps, self.weight, self.bias = norm.momentum, norm.eps, weight, bias
        self.running_mean, self.running_var = norm.running_mean, norm.running_var


class _Conv:
    def __init__(self, conv: nn.Conv2d, weight: torch.Tensor) -> None:
        self.stride, self.padding, self.dilation, self.groups, self.weight = conv.stride, conv.padding, conv.dilation, conv.groups, weight


def _sgd_steps(fast: bool, dtype: torch.dtype, lr: float, steps: int = 3) -> nn.Module:
    torch.manual_seed(0)
    model = scnet.create_model("scnet_demo", num_classes=10, in_chans=1).to(dtype).train()
    if fast:
        scnet.fast_train(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(4)
    for _ in range(steps):
        x, y = torch.randn(8, 1, 28, 28, generator=g, dtype=dtype), torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


# Three steps on random labels amplify rounding: at lr 0.1 a 1e-6 change of the input moves float32 weights by
# about 0.02 on the plain path alone. So float64 at lr 0.1, and float32 at lr 0.01, where that change is 1e-6.
@pytest.mark.parametrize("dtype, lr, tol", [(torch.float64, 0.1, 1e-10), (torch.float32, 0.01, 1e-5)])
def test_sgd_steps_match_the_reference_forms(dtype: torch.dtype, lr: float, tol: float) -> None:
    fast, plain = _sgd_steps(True, dtype, lr), _sgd_steps(False, dtype, lr)
    for (name, a), b in zip(fast.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=tol, msg=lambda m: f"{name}: {m}")


def test_stacked_batch_norm_equals_separate_norms() -> None:
    torch.manual_seed(0)
    norms = [nn.BatchNorm2d(c).train() for c in (3, 5, 2)]
    for n in norms:
        nn.init.uniform_(n.weight, 0.5, 1.5)
        nn.init.uniform_(n.bias, -1, 1)
    copies = copy.deepcopy(norms)
    x = torch.randn(4, 10, 6, 7, requires_grad=True)
    got = stacked_batch_norm(x, norms)
    want = torch.cat([n(part) for n, part in zip(copies, x.split([3, 5, 2], 1))], 1)
    torch.testing.assert_close(got, want)
    for a, b in zip(norms, copies):
        torch.testing.assert_close(a.running_mean, b.running_mean)
        torch.testing.assert_close(a.running_var, b.running_var)
        assert a.num_batches_tracked == b.num_batches_tracked == 1


def test_only_plain_training_batch_norms_are_stacked() -> None:
    bn = nn.BatchNorm2d(4)
    assert stackable_norms(bn, nn.BatchNorm2d(8))
    assert not stackable_norms(bn, nn.BatchNorm2d(4, momentum=None))  # cumulative average: its own count
    assert not stackable_norms(bn, nn.BatchNorm2d(4, eps=1e-3))
    assert not stackable_norms(bn, nn.BatchNorm2d(4).eval())  # frozen by norm_eval
    assert not stackable_norms(bn, nn.SyncBatchNorm(4))
    assert not stackable_norms(nn.GroupNorm(2, 4))


def test_frozen_norms_take_the_plain_path() -> None:
    blk = _block(32, 8)
    blk.k1[1].eval()  # as norm_eval leaves it
    blk.scconv.k3[1].eval()
    assert not blk._trains_stacked()
    ref = copy.deepcopy(blk)
    x = torch.randn(2, 32, 9, 9, dtype=torch.float64)
    assert not _trains_lean(blk.scconv, x)
    torch.testing.assert_close(blk(x), reference_block(ref, x), rtol=1e-10, atol=1e-10)
    for (name, a), b in zip(blk.named_buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"buffer {name}: {m}")
    assert blk.k1[1].num_batches_tracked == 0 and blk.bn1_a.num_batches_tracked == 1


# ---- the 1x1's normalised output recomputed in backward instead of kept ------------------------------------
def test_recomputed_keeps_a_recipe_not_the_tensor() -> None:
    """Inside the scope the saved views of ``base`` are dropped: ``base`` is freed after forward, backward calls the
    recipe once for all its readers, and every gradient equals plain autograd's."""
    import weakref

    from scnet.fast.recompute import recomputed

    g = torch.Generator().manual_seed(5)
    y = torch.randn(2, 6, 5, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w1, w2 = (torch.randn(3, 3, 3, 3, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))

    def readers(base: torch.Tensor) -> torch.Tensor:  # a ReLU saving its result, two convs on channel slices, a pool
        r = torch.relu_(base)
        a, b = r.split(3, dim=1)
        return F.conv2d(a, w1).sum() + F.conv2d(b, w2).square().sum() + F.avg_pool2d(b, 2).square().sum()

    want = torch.autograd.grad(readers(y * 2 - 1), [y, w1, w2])
    calls = []

    def make() -> torch.Tensor:
        calls.append(1)
        return (y.detach() * 2 - 1).clamp_min_(0)

    base = y * 2 - 1
    kept = weakref.ref(base)
    with recomputed(base, make):
        loss = readers(base)
    del base
    assert kept() is None, "the graph still holds the tensor it was to recompute"
    got = torch.autograd.grad(loss, [y, w1, w2])
    assert len(calls) == 1
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_recomputed_hands_backward_the_kept_geometry_and_type() -> None:
    """A recipe may compute in another layout or a wider type (here NCHW float64 for a channels_last bfloat16 map):
    backward still gets the values in the saved tensor's own layout and type, so the gradients equal plain autograd's."""
    from scnet.fast.recompute import recomputed

    g = torch.Generator().manual_seed(8)
    y = torch.randn(2, 4, 5, 5, generator=g).to(torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    w = torch.randn(3, 2, 3, 3, generator=g).to(torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_(True)

    def loss_of(base: torch.Tensor) -> torch.Tensor:
        return F.conv2d(torch.relu_(base)[:, 2:], w).float().square().sum()

    want = torch.autograd.grad(loss_of(y * 2), [y, w])
    base = y * 2
    with recomputed(base, lambda: (y.detach().double() * 2).contiguous().clamp_min_(0)):
        loss = loss_of(base)
    got = torch.autograd.grad(loss, [y, w])
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_recomputed_refuses_what_it_cannot_do() -> None:
    from scnet.fast.recompute import can_recompute, recomputed

    assert can_recompute()
    with torch.autograd.graph.save_on_cpu():  # another scope's hooks: the block keeps the plain path under them
        assert not can_recompute()
    with pytest.raises(ValueError, match="storage offset 4"):
        with recomputed(torch.zeros(8)[4:], lambda: torch.zeros(4)):
            pass
    y = torch.randn(4, requires_grad=True)
    base = y * 3
    with recomputed(base, lambda: y.detach() * 3):
        loss = (base * base).sum()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, y, create_graph=True)


def test_block_keeps_less_for_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SC block's training forward leaves one map of the 3x3 width less allocated (what backward keeps) with the
    recompute than without it, less the stacked norm's bias that the recipe holds (the norm's backward keeps its
    weight anyway): the profiler's count of live bytes."""
    from torch.profiler import ProfilerActivity, profile

    blk = _block(32, 8)
    x = torch.randn(2, 32, 12, 12, dtype=torch.float64)

    def live_bytes_after_forward(recompute: bool) -> int:
        monkeypatch.setattr(training, "can_recompute", lambda: recompute)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = blk(x)  # noqa: F841 - kept alive, with the graph, until the count is taken
        return sum(e.cpu_memory_usage for e in prof.events())

    width, itemsize = 8, 8  # the block's 3x3 width (planes 8); float64
    one_map = 2 * width * 12 * 12 * itemsize  # (N, w, H, W)
    assert live_bytes_after_forward(False) - live_bytes_after_forward(True) == one_map - width * itemsize


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bfloat16 autocast"])
def test_recomputed_map_gives_the_gradients_of_the_kept_one_bit_for_bit(monkeypatch: pytest.MonkeyPatch, autocast: bool) -> None:
    """The recipe runs the norm's own kernel on the same batch, so backward sees the very values it would have kept:
    a training step's gradients are identical, in float32 and under CPU bfloat16 autocast (where the map is
    bfloat16 and oneDNN refuses a mixed convolution in backward)."""
    torch.manual_seed(0)
    model = scnet.fast_train(scnet.create_model("scnet_demo", num_classes=10, in_chans=1).train())
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g)

    def grads(net: nn.Module, recompute: bool) -> list[torch.Tensor]:
        if not recompute:
            monkeypatch.setattr(training, "can_recompute", lambda: False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(net(x), y)
        return list(torch.autograd.grad(loss, list(net.parameters())))

    got, want = grads(model, True), grads(twin, False)
    for (name, _), a, b in zip(model.named_parameters(), got, want):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("reentrant", [False, True])
def test_block_under_activation_checkpointing_equals_the_plain_block(reentrant: bool) -> None:
    """Checkpointing's own saved-tensor hooks (non-reentrant) keep the plain path; the reentrant form recomputes
    the block with the recompute on: both give the gradients of the block run without checkpointing."""
    from torch.utils.checkpoint import checkpoint

    blk = _block(32, 8)
    twin = copy.deepcopy(blk)
    x = torch.randn(2, 32, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(7), requires_grad=True)
    blk(x).square().sum().backward()
    want = [x.grad.clone(), *(p.grad for p in blk.parameters())]
    x.grad = None
    checkpoint(twin, x, use_reentrant=reentrant).square().sum().backward()
    for a, b in zip([x.grad, *(p.grad for p in twin.parameters())], want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---- the swap itself ---------------------------------------------------------------------------------------
def test_fast_train_swaps_classes_in_place_and_back() -> None:
    """The fast forms add no state: the same module objects, parameters, state-dict names and values; eval mode runs
    the reference forward; ``enable=False`` restores the reference classes."""
    torch.manual_seed(0)
    model = scnet.create_model("scnet_demo", num_classes=10, in_chans=1)
    params, keys = list(model.parameters()), list(model.state_dict())
    assert scnet.fast_train(model) is model
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"FastSCBottleneck", "FastSelfCalibration"} <= kinds and "SCBottleneck" not in kinds
    assert all(a is b for a, b in zip(model.parameters(), params)) and list(model.state_dict()) == keys
    x = torch.randn(2, 1, 28, 28)
    fast_out = model.eval()(x)
    scnet.fast_train(model, enable=False)
    assert not any(type(m).__name__.startswith("Fast") for m in model.modules())
    assert torch.equal(model(x), fast_out)
    with pytest.raises(TypeError, match="nn.Module"):
        scnet.fast_train("scnet50")


def test_fast_train_reaches_sc_layers_in_any_model() -> None:
    """A converted torchvision ResNet holds SCConv layers, not our blocks: their calibration branches take the fast
    form, and a training step gives the reference's gradients."""
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet18(num_classes=4)
    scnet.convert(ref)  # in place
    ref.double().train()
    fast = scnet.fast_train(copy.deepcopy(ref))
    assert any(isinstance(m, FastSelfCalibration) for m in fast.modules())
    x = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    a, b = ref(x), fast(x)
    torch.testing.assert_close(b, a)
    ga = torch.autograd.grad(a.square().sum(), list(ref.parameters()))
    gb = torch.autograd.grad(b.square().sum(), list(fast.parameters()))
    for (name, _), p, q in zip(ref.named_parameters(), ga, gb):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-10, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("factory", ["scnet", "timm"])
def test_any_trainer_gets_the_fast_forms_by_asking(factory: str) -> None:
    """``fast_train=True`` through ``scnet.create_model`` or ``timm.create_model`` (a loop of one's own, Lightning,
    timm's train.py) gives the fast forms, with the reference's training step in float64; left out, the reference."""
    import timm

    create = scnet.create_model if factory == "scnet" else timm.create_model
    torch.manual_seed(0)
    fast = create("scnet_demo", num_classes=4, in_chans=1, fast_train=True).double().train()
    ref = copy.deepcopy(fast)
    scnet.fast_train(ref, enable=False)
    assert {type(m) for m in fast.modules()} >= {FastSCBottleneck, FastSelfCalibration}
    assert not any(type(m).__name__.startswith("Fast") for m in ref.modules())
    assert not any(type(m).__name__.startswith("Fast") for m in create("scnet_demo", num_classes=4).modules())
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, b = ref(x), fast(x)
    torch.testing.assert_close(b, a)
    ga = torch.autograd.grad(a.square().sum(), list(ref.parameters()))
    gb = torch.autograd.grad(b.square().sum(), list(fast.parameters()))
    for p, q in zip(ga, gb):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-10)
    with pytest.raises(ValueError, match="fast_train must be True or False, got 'yes'"):
        create("scnet_demo", fast_train="yes")
