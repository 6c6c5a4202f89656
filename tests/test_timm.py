"""timm integration: create_model, features, intermediates and pruning contracts, pretrained cfgs and loading.

The contracts of timm's module-filtered tests (forward_intermediates, the 'getter' feature wrapper,
prune_intermediate_layers), which timm's own suite only collects for its own modules, are re-stated here.
"""
import copy
import math

import pytest
import timm
import torch
from safetensors.torch import save_file

import scnet
from seeded import seeded_input, seeded_state_dict

NAMES = scnet.list_models()
FEW = ["scnet50", "scnet50_v1d", "sescnet50", "scnext50_32x4d_plain"]


def test_every_model_is_registered_in_timm_with_a_complete_cfg() -> None:
    assert sorted(timm.list_models("sc*") + timm.list_models("sesc*")) == NAMES
    assert sorted(timm.list_models(module="scnet")) == NAMES
    assert sorted(timm.list_pretrained("sc*")) == ["scnet101.mcg_in1k", "scnet50.mcg_in1k", "scnet50_v1d.mcg_in1k"]
    for name in NAMES:
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        for key in ("url", "input_size", "min_input_size", "crop_pct", "interpolation", "mean", "std", "first_conv", "classifier", "pool_size"):
            assert key in cfg, (name, key)
        assert cfg["first_conv"] == ("conv1.0" if "v1d" in name else "conv1")
    cfg = timm.models.get_pretrained_cfg("scnet50").to_dict()
    assert cfg["url"].endswith("scnet50-dc6a7e87.pth") and "dc6a7e87" in cfg["notes"][0]
    data_cfg = timm.data.resolve_model_data_config(timm.create_model("scnet50_v1d"))
    assert data_cfg["crop_pct"] == 0.875 and data_cfg["interpolation"] == "bilinear" and data_cfg["input_size"] == (3, 224, 224)


@pytest.mark.parametrize("name", FEW)
def test_timm_create_model_features_only(name: str) -> None:
    model = timm.create_model(name, features_only=True, out_indices=(1, 2, 4), in_chans=1).eval()
    with torch.no_grad():
        feats = model(torch.randn(2, 1, 64, 96))
    assert [f.shape[1] for f in feats] == model.feature_info.channels() == [256, 512, 2048]
    assert [f.shape[-1] for f in feats] == [96 // r for r in model.feature_info.reduction()]


@pytest.mark.parametrize("name", FEW)
def test_forward_intermediates_contract(name: str) -> None:
    model = timm.create_model(name).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    x = torch.randn(1, 3, 97, 75)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        assert len(feats) == len(info.channels()) == 5
        for c, r, f in zip(info.channels(), info.reduction(), feats):
            assert f.shape[1] == c and f.shape[2] <= math.ceil(97 / r) + 1 and f.shape[3] <= math.ceil(75 / r) + 1
        torch.testing.assert_close(final, model.forward_features(x), rtol=1e-5, atol=1e-8)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model.forward_intermediates(x)[0], final, rtol=1e-4, atol=1e-5)
        assert [f.shape for f in model.forward_intermediates(x, indices=2, intermediates_only=True)] == [f.shape for f in feats[-2:]]


@pytest.mark.parametrize("name", FEW)
def test_getter_features(name: str) -> None:
    model = timm.create_model(name, features_only=True, feature_cls="getter").eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == model.feature_info.channels()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["scnet50", "scnet50_v1d"])
def test_prune_intermediate_layers_contract(name: str) -> None:
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        taps = model.forward_intermediates(x, intermediates_only=True)
        keep_head = copy.deepcopy(model)
        keep_head.prune_intermediate_layers([4], prune_head=False)
        torch.testing.assert_close(keep_head(x), expected)
    for i in range(5):
        with torch.no_grad():
            early = model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(early[0], taps[i])
            pruned = copy.deepcopy(model)
            take = pruned.prune_intermediate_layers([i])
            torch.testing.assert_close(pruned.forward_intermediates(x, indices=take, intermediates_only=True)[0], taps[i])
            if i < 4:
                torch.testing.assert_close(pruned.forward_features(x), taps[i])
            # What pruning leaves, as timm's own ResNet-50 leaves it: the features' width and a head of that width.
            reference = timm.create_model("resnet50")
            reference.prune_intermediate_layers([i], prune_head=False)
            assert pruned.num_features == pruned.head_hidden_size == reference.num_features == taps[i].shape[1], f"pruned to {i}"
            assert isinstance(pruned.get_classifier(), torch.nn.Identity)  # the head sized for the old features is gone
        pruned.train()
        outs = pruned.forward_intermediates(x, indices=take, intermediates_only=True) + [pruned.forward_features(x)]
        sum(o.sum() for o in outs).backward()
        assert not [n for n, p in pruned.named_parameters() if p.grad is None], f"pruned to {i}"


def test_factory_kwargs_and_unknown_kwargs() -> None:
    model = timm.create_model("scnet50_v1d", device="meta", dtype=torch.float64)
    assert {p.device.type for p in model.parameters()} == {"meta"} and {p.dtype for p in model.parameters()} == {torch.float64}
    model.reset_classifier(10)
    assert model.fc.weight.device.type == "meta" and model.fc.weight.dtype == torch.float64
    with pytest.raises(TypeError):
        timm.create_model("scnet50", not_a_model_arg=1)
    assert model.group_matcher()["blocks"] == r"^layer(\d+)\.(\d+)"


def test_timm_pretrained_from_a_local_file_adapts_classes_and_channels(tmp_path) -> None:
    source = timm.create_model("scnet50")
    state = seeded_state_dict(source.state_dict(), seed=11)
    save_file(state, str(tmp_path / "scnet50.safetensors"))
    overlay = dict(file=str(tmp_path / "scnet50.safetensors"))
    model = timm.create_model("scnet50", pretrained=True, pretrained_cfg_overlay=overlay).eval()
    source.load_state_dict(state)
    x = seeded_input((1, 3, 64, 64))
    with torch.no_grad():
        torch.testing.assert_close(model(x), source.eval()(x))
    gray = timm.create_model("scnet50", pretrained=True, pretrained_cfg_overlay=overlay, num_classes=10, in_chans=1)
    assert gray.conv1.weight.shape == (64, 1, 7, 7) and gray.fc.out_features == 10
    torch.testing.assert_close(gray.layer3[0].scconv.k2[1].weight, state["layer3.0.scconv.k2.1.weight"])
    torch.testing.assert_close(gray.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))


def test_a_pruned_model_trains_with_gradient_checkpointing() -> None:
    """timm keeps a pruned stage as an empty Sequential, which ``checkpoint_seq`` can iterate (an Identity it cannot)."""
    model = timm.create_model("scnet_demo", num_classes=3)
    reference = copy.deepcopy(model)
    take = model.prune_intermediate_layers([1, 2])
    model.set_grad_checkpointing(True)
    model.train()
    reference.train()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_intermediates(x, indices=take, intermediates_only=True)
    expected = reference.forward_intermediates(x, indices=take, intermediates_only=True)
    for got, want in zip(feats, expected):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(model.forward_features(x), expected[-1])
    sum(f.sum() for f in feats).backward()
    assert all(p.grad is not None for p in model.layer1.parameters())


def test_every_registered_name_is_a_function_of_its_module() -> None:
    namespace: dict = {}
    exec("from scnet.models.scnet import *", namespace)  # timm lists each builder in __all__
    for name in scnet.list_models():
        assert callable(namespace[name]) and namespace[name].__name__ == name
