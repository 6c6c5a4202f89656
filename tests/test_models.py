"""Every registered model: official layout and numbers, counts, small inputs, training, API and errors."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import timm
import torchvision

import scnet
from scnet.models import SCBottleneck
from scnet.models import registry
from seeded import seeded_input, seeded_state_dict

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = ("scnet50", "scnet50_v1d", "scnet101", "scnet101_v1d")
ALL = scnet.list_models()
SC_MODELS = [n for n in ALL if not n.endswith("_plain")]


def _conv_params(m: nn.Module) -> int:
    return sum(mod.weight.numel() for mod in m.modules() if isinstance(mod, nn.Conv2d))


@pytest.fixture(scope="module")
def official_layout() -> dict:
    return json.loads((FIXTURES / "official_layout.json").read_text())


# ---- compatibility with the official code --------------------------------------------------------------------
@pytest.mark.parametrize("name", OFFICIAL)
def test_state_dict_names_and_shapes_are_official(name: str, official_layout: dict) -> None:
    ours = [[k, list(v.shape)] for k, v in scnet.create_model(name).state_dict().items()]
    assert ours == official_layout[name]


@pytest.mark.parametrize("name", OFFICIAL)
def test_outputs_equal_the_official_code(name: str) -> None:
    golden = torch.load(FIXTURES / "official_logits.pt")
    model = scnet.create_model(name).eval()
    model.load_state_dict(seeded_state_dict(model.state_dict(), seed=1), strict=True)
    for h, w in ((224, 224), (97, 130)):
        with torch.no_grad():
            y = model(seeded_input((2, 3, h, w), seed=2))
        assert (y - golden[f"{name}@{h}x{w}"]).abs().max() <= 1e-5


# Independent references for the trunk: each plain twin is a well-known model and loads its weights.
TWIN_REFERENCES = {
    "scnet50_plain": lambda: torchvision.models.resnet50(),
    "scnet101_plain": lambda: torchvision.models.resnet101(),
    "scnext50_32x4d_plain": lambda: torchvision.models.resnext50_32x4d(),
    "scnext101_32x4d_plain": lambda: timm.create_model("resnext101_32x4d"),
    "sescnet50_plain": lambda: timm.create_model("seresnet50"),
}


@pytest.mark.parametrize("name", ["scnet50_plain", "scnext50_32x4d_plain", "sescnet50_plain"])
def test_plain_twin_is_the_reference_model(name: str) -> None:
    ref = TWIN_REFERENCES[name]().eval()
    ref.load_state_dict(seeded_state_dict(ref.state_dict(), seed=3))
    twin = scnet.create_model(name).eval()
    twin.load_state_dict(ref.state_dict(), strict=True)
    x = seeded_input((2, 3, 97, 130), seed=4)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), ref(x), rtol=1e-5, atol=1e-5)


# ---- counts ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,params",
    [("scnet50", 25_564_584), ("scnet50_v1d", 25_583_816), ("scnet101", 44_565_416), ("scnet101_v1d", 44_689_192)],
)
def test_parameter_counts(name: str, params: int) -> None:
    with torch.device("meta"):
        assert scnet.count_params(scnet.create_model(name)) == params


@pytest.mark.parametrize("name", SC_MODELS)
def test_twin_has_equal_conv_params_and_torchvision_counts(name: str) -> None:
    with torch.device("meta"):
        sc, twin = scnet.create_model(name), scnet.create_model(scnet.plain_twin(name))
    assert _conv_params(sc) == _conv_params(twin)
    if plain_name := TWIN_REFERENCES.get(scnet.plain_twin(name)):
        assert scnet.count_params(twin) == sum(p.numel() for p in plain_name().parameters())


@pytest.mark.parametrize("name,gmacs", [("scnet50", 3.925), ("scnet50_v1d", 4.685), ("scnet101", 7.169), ("scnet50_plain", 4.089)])
def test_multiply_adds_at_224(name: str, gmacs: float) -> None:
    with torch.device("meta"):
        macs = scnet.count_macs(scnet.create_model(name))
    assert abs(macs / 1e9 - gmacs) < 5e-4


def test_small_stem_cifar_counts() -> None:
    # CIFAR-10 SCNet-50: 3x3/1 stem, 10 classes (counted independently with the official blocks).
    with torch.device("meta"):
        assert scnet.count_params(scnet.create_model("scnet50", stem_type="small", num_classes=10)) == 23_528_394


# ---- every model, every size ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_works_from_32px_and_trains_with_batch_1(name: str) -> None:
    model = scnet.create_model(name, num_classes=7)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 7)
        assert model(torch.randn(1, 3, 33, 47)).shape == (1, 7)
    model.train()
    out = model(torch.randn(1, 3, 32, 32))  # every stage-4 norm sees a single value per channel
    out.sum().backward()
    assert out.shape == (1, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    model = scnet.create_model(name, num_classes=5).train()
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name", ["scnet50", "scnet50_v1d_plain"])
def test_small_stem_on_28px_grayscale(name: str) -> None:
    model = scnet.create_model(name, stem_type="small", in_chans=1, num_classes=10).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 1, 28, 28))
    assert feats.shape == (2, 2048, 4, 4)  # no stem downsampling: 28 -> 28, 14, 7, 4
    assert isinstance(model.maxpool, nn.Identity)


@pytest.mark.parametrize("name", ALL)
def test_backbone_api(name: str) -> None:
    model = scnet.create_model(name).eval()
    x = torch.randn(1, 3, 64, 96)
    nf, red = model.num_features, model.feature_info[-1]["reduction"]
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, nf, math.ceil(64 / red), math.ceil(96 / red))
        assert model.forward_head(feats, pre_logits=True).shape == (1, nf)
        # Each stage doubles the width; the stem tap is bn1's width.
        assert [f["num_chs"] for f in model.feature_info] == [model.bn1.num_features, nf // 8, nf // 4, nf // 2, nf]
        model.reset_classifier(3)
        assert model(x).shape == (1, 3) and model.get_classifier() is model.fc
        model.reset_classifier(0)
        assert model(x).shape == (1, nf)


@pytest.mark.parametrize("output_stride,size", [(16, 4), (8, 8)])
def test_output_stride_dilates_the_last_stages(output_stride: int, size: int) -> None:
    model = scnet.create_model("scnet50_v1d", output_stride=output_stride).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 64, 64)).shape[-1] == size


# ---- injection ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["groupnorm", lambda c: nn.GroupNorm(4, c)])
def test_group_norm_injection_leaves_no_batch_norm(norm) -> None:
    model = scnet.create_model("scnet50_v1d", norm_layer=norm)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    model(torch.randn(1, 3, 64, 64)).sum().backward()  # GroupNorm trains with batch 1 anywhere


def test_frozen_batch_norm_for_detection() -> None:
    from torchvision.ops import FrozenBatchNorm2d

    model = scnet.create_model("scnet50", norm_layer="frozenbn")
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_zero_init_last_starts_blocks_as_identity() -> None:
    model = scnet.create_model("scnet50", zero_init_last=True)
    assert all(b.bn3.weight.abs().sum() == 0 for b in model.modules() if isinstance(b, SCBottleneck))


# ---- execution modes ------------------------------------------------------------------------------------
def test_meta_device_construction() -> None:
    with torch.device("meta"):
        model = scnet.create_model("scnet101_v1d")
        y = model(torch.empty(2, 3, 224, 224))
    assert all(t.device.type == "meta" for t in model.state_dict().values()) and y.shape == (2, 1000)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["scnet50", "scnet50_v1d"])
def test_torchscript_matches_eager(name: str) -> None:
    model = scnet.create_model(name).eval()
    model.load_state_dict(seeded_state_dict(model.state_dict(), seed=5))
    scripted = torch.jit.script(model)
    x = seeded_input((1, 3, 97, 130), seed=6)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


# ---- errors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "x,error,match",
    [
        (torch.zeros(3, 64, 64), ValueError, "4-D"),
        (torch.zeros(1, 1, 64, 64), ValueError, "expects 3 input channels, got 1"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, "floating-point"),
    ],
)
def test_bad_model_input(x: torch.Tensor, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        scnet.create_model("scnet50")(x)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(stem_type="tiny"), "stem_type must be one of"),
        (dict(output_stride=4), "output_stride must be 8, 16 or 32, got 4"),
        (dict(block_args=dict(pooling_r=0)), "pooling_r must be an integer >= 1, got 0"),
        (dict(num_classes=-1), "num_classes must be an integer >= 0"),
    ],
)
def test_bad_model_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        scnet.create_model("scnet50", **kwargs)


def test_registry_errors_and_none_kwargs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))  # leave the real registry untouched
    with pytest.raises(ValueError, match="did you mean scnet50"):
        scnet.create_model("scnet5O")
    with pytest.raises(TypeError):
        scnet.create_model("scnet50", not_a_model_arg=1)
    assert scnet.create_model("scnet50", num_classes=None).num_classes == 1000
    def extra_model(**kwargs):
        return None

    registry.register_model(extra_model)
    assert "extra_model" in scnet.list_models()
    with pytest.raises(ValueError, match="'extra_model' is already registered"):
        registry.register_model(extra_model)
    assert scnet.list_models("scnet50*") == ["scnet50", "scnet50_plain", "scnet50_v1d", "scnet50_v1d_plain"]


def test_stochastic_depth_follows_timms_rule_and_is_absent_by_default() -> None:
    """``drop_path_rate`` gives each block timm's ResNet probability (0 at the first block, rising linearly to the
    rate at the last); left at 0, no block holds a drop path, so the official outputs cannot change."""
    def rates(model: nn.Module) -> list[float]:
        blocks = [b for name in ("layer1", "layer2", "layer3", "layer4") for b in getattr(model, name)]
        return [float(getattr(b.drop_path, "drop_prob", None) or 0.0) for b in blocks]

    ours = rates(scnet.create_model("scnet101", drop_path_rate=0.3))
    assert ours == rates(timm.create_model("resnet101", drop_path_rate=0.3))
    assert ours[0] == 0.0 and ours[-1] == pytest.approx(0.3) and len(ours) == 33
    assert rates(scnet.create_model("scnet_demo_plain", drop_path_rate=0.1)) == rates(scnet.create_model("scnet_demo", drop_path_rate=0.1))
    plain = scnet.create_model("scnet50")
    assert not any(type(m).__name__ == "DropPath" for m in plain.modules())
    for bad in (1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match="drop_path_rate must be in"):
            scnet.create_model("scnet_demo", drop_path_rate=bad)


def test_stochastic_depth_drops_whole_branches_in_training_only() -> None:
    """In eval a model with drop path gives the outputs of the same weights without it; in training a dropped branch
    leaves a block's output equal to its shortcut path, and the fast forms draw and apply the same masks."""
    torch.manual_seed(0)
    ref = scnet.create_model("scnet_demo", num_classes=5, in_chans=1).double()
    dropping = scnet.create_model("scnet_demo", num_classes=5, in_chans=1, drop_path_rate=0.5).double()
    dropping.load_state_dict(ref.state_dict())
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.equal(dropping.eval()(x), ref.eval()(x))
    block = dropping.layer4[-1].train()  # rate 0.5: some of 64 samples dropped, some kept (scaled by 2)
    inputs = torch.randn(64, block.conv1_a.in_channels, 8, 8, dtype=torch.float64)
    torch.manual_seed(3)
    out = block(inputs)
    shortcut = inputs if block.downsample is None else block.downsample(inputs)
    dropped = [torch.equal(out[i], torch.relu(shortcut[i])) for i in range(64)]
    assert 10 < sum(dropped) < 54
    fast = scnet.fast_train(copy.deepcopy(dropping)).train()
    dropping.train()
    torch.manual_seed(4)
    want = dropping(x)
    torch.manual_seed(4)
    torch.testing.assert_close(fast(x), want)
