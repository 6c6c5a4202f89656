"""``scnet.deploy``: the fused inference model computes what the original computes, for every variant."""
import copy
import shutil

import pytest
import torch
import torch.nn as nn
import torchvision

import scnet
from scnet.fast import FusedConv, deploy, fold_conv_norm
from scnet.fast.inference import FusedSCBottleneck
from seeded import rel_error, seeded_input, seeded_model, seeded_state_dict

ALL_MODELS = scnet.list_models()
ODD = (1, 3, 67, 45)  # not a multiple of the pooling rate anywhere: exercises the general upsample path


@pytest.mark.parametrize("name", ALL_MODELS)
def test_deploy_is_exact_in_float64(name: str) -> None:
    # In float64 the only differences left are rounding (~1e-15): any error in folding, merging or the gate shows.
    model = seeded_model(name).double()
    fused = deploy(model)
    assert not fused.deploy_report.kept
    for shape in (ODD, (1, 3, 64, 96)):  # odd sizes, then sizes divisible by r (the broadcast gate)
        x = seeded_input(shape).double()
        with torch.no_grad():
            assert rel_error(fused(x), model(x)) < 1e-10, shape


@pytest.mark.parametrize("name", ALL_MODELS)
def test_deploy_float32_matches_eager(name: str) -> None:
    model = seeded_model(name)
    fused = deploy(model)
    x = seeded_input(ODD)
    with torch.inference_mode():
        want, got = model(x), fused(x)
    assert rel_error(got, want) <= 1e-4 and torch.equal(got.argmax(1), want.argmax(1))
    assert got.shape == want.shape


def test_deploy_counts_what_it_fused_and_leaves_the_input_alone() -> None:
    model = seeded_model("scnet50")
    before = copy.deepcopy(model.state_dict())
    fused = deploy(model)
    kinds = list(fused.deploy_report.fused.values())
    assert kinds.count("FusedSCBottleneck") == 3 + 4 + 6 + 3 and "stem" in kinds
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the input model is untouched
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    # One merged 1x1 per SC bottleneck instead of conv1_a + conv1_b: 16 fewer convolutions, no norm at all.
    block = fused.layer1[0]
    assert isinstance(block, FusedSCBottleneck) and block.conv1.weight.shape == (64, 64, 1, 1)
    assert fused.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_fold_conv_norm_restates_batch_norm() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True)
    norm = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        norm.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        norm.running_var.copy_(torch.tensor([0.5, 2.0, 1.0, 0.25]))
        norm.weight.copy_(torch.tensor([1.0, 0.5, -1.0, 2.0]))
        norm.bias.copy_(torch.tensor([0.0, 0.1, 0.2, -0.3]))
    w, b = fold_conv_norm(conv, norm)
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    torch.testing.assert_close(w, conv.weight * scale[:, None, None, None])
    torch.testing.assert_close(b, (conv.bias - norm.running_mean) * scale + norm.bias)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("op", [None, "add", "mul"])
def test_fused_conv_equals_separate_ops(relu: bool, op) -> None:
    g = torch.Generator().manual_seed(1)
    conv = FusedConv(torch.randn(6, 4, 3, 3, generator=g), torch.randn(6, generator=g), stride=1, padding=1, relu=relu)
    x = torch.randn(2, 4, 9, 7, generator=g).contiguous(memory_format=torch.channels_last)
    other = torch.randn(2, 6, 9, 7, generator=g).contiguous(memory_format=torch.channels_last)
    want = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    if op == "add":
        want = want + other
    elif op == "mul":
        want = want * other
    want = want.relu() if relu else want
    got = conv(x) if op is None else conv(x, other, op)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_converted_torchvision_model_deploys() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    scnet.convert(model)
    model.load_state_dict(seeded_state_dict(model.state_dict()))
    model.eval()
    fused = deploy(model)
    # resnet18: 8 basic blocks of two 3x3 convolutions, all converted (the stem is 7x7).
    assert sum(v == "FusedSCConv" for v in fused.deploy_report.fused.values()) == 16
    x = seeded_input(ODD)
    with torch.inference_mode():
        assert rel_error(fused(x), model(x)) < 1e-4


def test_training_mode_and_bad_arguments_are_refused() -> None:
    model = scnet.create_model("scnet_demo")
    with pytest.raises(ValueError, match="eval mode"):
        deploy(model)
    with pytest.raises(ValueError, match="backend must be one of"):
        deploy(model.eval(), backend="tensorrt")
    with pytest.raises(TypeError, match="nn.Module"):
        deploy("scnet50")


def test_unfoldable_norm_is_kept_or_refused() -> None:
    model = scnet.create_model("scnet_demo", norm_layer="groupnorm").eval()
    fused = deploy(model)
    assert len(fused.deploy_report.kept) == 4 + 1  # the four blocks and the stem, each with its reason
    assert all("running statistics" in why for why in fused.deploy_report.kept.values())
    x = seeded_input((1, 3, 32, 32))
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x))  # kept blocks still compute the same
    with pytest.raises(ValueError, match="cannot fuse .*GroupNorm"):
        deploy(model, strict=True)


def test_portable_backend_scripts_traces_and_exports() -> None:
    model = seeded_model("scnet_demo")
    fused = deploy(model)
    x = seeded_input((2, 3, 61, 75))
    want = model(x)
    scripted = torch.jit.script(fused)
    torch.testing.assert_close(scripted(x), want, rtol=1e-4, atol=1e-5)
    traced = torch.jit.trace(fused, seeded_input((1, 3, 64, 64)), check_trace=False)
    torch.testing.assert_close(traced(x), want, rtol=1e-4, atol=1e-5)  # no size-specific branch baked in
    portable = deploy(model, backend="portable")
    assert not any(getattr(m, "onednn", False) for m in portable.modules())
    torch.testing.assert_close(portable(x), want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_deploy_exports_to_onnx(tmp_path) -> None:
    from scnet.engines import check_onnx
    from scnet.export import export_onnx

    import json

    import onnx

    from scnet.models.scnet import default_spec
    from scnet.models.spec import ModelSpec

    model = seeded_model("scnet_demo")
    path = tmp_path / "fused.onnx"
    export_onnx(deploy(model), path, in_chans=3, spec=default_spec("scnet_demo"))
    for row in check_onnx(model, path, [(61, 75), (97, 130)], in_chans=3):  # against the unfused model
        assert row["rel_error"] < 1e-5 and row["argmax_equal"], row
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}  # what the file says
    assert ModelSpec.from_dict(json.loads(meta["data_info"])) == default_spec("scnet_demo") and meta["input_size"] == "[3, 32, 32]"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler on CPU")
def test_deploy_compiles_with_inductor_freezing() -> None:
    import torch._inductor.config as inductor_config

    model = seeded_model("scnet_demo")
    fused = deploy(model)
    x = seeded_input((2, 3, 64, 64))
    with inductor_config.patch(freezing=True), torch.inference_mode():
        got = torch.compile(fused)(x)
        want = model(x)
    assert rel_error(got, want) < 1e-5


def test_layout_follows_the_channels_last_flag() -> None:
    model = seeded_model("scnet_demo")
    x = seeded_input((1, 3, 32, 32))
    for channels_last in (True, False):
        fused = deploy(model, channels_last=channels_last, backend="portable")  # oneDNN's fused calls pick their own layout
        conv = fused.layer1[0].k1  # a 3x3 (1x1 weights are contiguous in both layouts)
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        with torch.inference_mode():
            features = fused.forward_features(x)
        assert features.is_contiguous(memory_format=torch.channels_last) == channels_last
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-5)


class _DoubledResidual(scnet.models.SCBottleneck):
    """A user's block: the reference bottleneck with the branch's output doubled (its own forward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(2 * super().forward(x) - (self.downsample(x) if self.downsample is not None else x))


def test_a_users_subclass_keeps_its_own_forward() -> None:
    """deploy swaps by exact type, as fast_train does: a subclass written elsewhere is kept (its forward runs), or
    refused with strict; before, isinstance matching replaced it with the base class's fused form (max error 0.49)."""
    model = scnet.create_model("scnet_demo", num_classes=10).eval()
    block = model.layer2[0]
    block.__class__ = _DoubledResidual
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = model(x)
    fused = deploy(model, check=x)
    assert fused.layer2[0].__class__ is _DoubledResidual and "layer2.0" in fused.deploy_report.kept
    assert "_DoubledResidual extends SCBottleneck outside scnet" in fused.deploy_report.kept["layer2.0"]
    assert isinstance(fused.layer3[0], FusedSCBottleneck)  # the package's own blocks are fused as before
    with torch.inference_mode():
        assert (fused(x) - want).abs().max() < 1e-4
    assert fused.deploy_report.check_error < 1e-4
    with pytest.raises(ValueError, match="deploy cannot fuse layer2.0: _DoubledResidual extends SCBottleneck outside scnet"):
        deploy(model, strict=True)


def test_deploy_checks_its_copy_when_given_an_input(monkeypatch: pytest.MonkeyPatch) -> None:
    from scnet.fast import inference

    model = scnet.create_model("scnet_demo", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert deploy(model, check=x).deploy_report.check_error < 1e-5
    def wrong(block: nn.Module, onednn: bool) -> nn.Module:  # a form that computes something else
        made = copy.deepcopy(block)
        next(p for p in made.parameters() if p.ndim == 4).data.mul_(2)
        return made

    monkeypatch.setitem(inference._FORMS, scnet.models.SCBottleneck, wrong)
    with pytest.raises(ValueError, match=r"deploy's copy differs from the model on the given input by .* more than rtol 0.0001"):
        deploy(model, check=x)
