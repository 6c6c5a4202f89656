"""``scnet.load_model``, the front door: each kind of model reference gives the right model, weights and description."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torchvision

import scnet
from scnet.data import DataInfo
from scnet.load import BareWeightsError
from seeded import seeded_state_dict


def _same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return own.keys() == state.keys() and all(torch.equal(own[k], v) for k, v in state.items())


def test_an_official_file_is_known_by_its_published_name(tmp_path: Path) -> None:
    state = seeded_state_dict(scnet.create_model("scnet50").state_dict(), seed=5)
    torch.save(state, tmp_path / "scnet50-dc6a7e87.pth")  # the name of the file the authors published
    loaded = scnet.load_model(file=str(tmp_path / "scnet50-dc6a7e87.pth"))
    assert loaded.label == "scnet50 (weights)" and _same_weights(loaded.model, state) and not loaded.model.training
    assert (loaded.info.num_classes, loaded.info.image_size, loaded.info.mean) == (1000, 224, (0.485, 0.456, 0.406))
    assert loaded.info.classes[1] == "goldfish"  # ImageNet's readable class names
    torch.save(state, tmp_path / "renamed.pth")
    with pytest.raises(BareWeightsError, match="renamed.pth holds bare weights: give the model's name too"):
        scnet.load_model(file=str(tmp_path / "renamed.pth"))


def test_any_name_with_bare_weights(tmp_path: Path) -> None:
    state = seeded_state_dict(torchvision.models.resnet18(num_classes=10).state_dict(), seed=6)
    torch.save({"state_dict": state}, tmp_path / "w.pth")  # timm's container
    loaded = scnet.load_model("resnet18", file=str(tmp_path / "w.pth"), num_classes=10)
    assert loaded.label == "resnet18 (weights)" and _same_weights(loaded.model, state) and loaded.info.num_classes == 10
    with pytest.raises(ValueError, match=r"w.pth does not fit ResNet: 80 missing"):
        scnet.load_model("resnet34", file=str(tmp_path / "w.pth"), num_classes=10)


def test_a_training_checkpoint_describes_its_own_model(tmp_path: Path) -> None:
    info = DataInfo("toy", 4, 1, 28, (0.5,), (0.25,), ("a", "b", "c", "d"))
    model = scnet.create_model("scnet_demo", num_classes=4, in_chans=1)
    state = seeded_state_dict(model.state_dict(), seed=7)
    ema = seeded_state_dict(model.state_dict(), seed=8)
    ck = dict(model=state, model_ema=ema, config=dict(model="scnet_demo"), data_info=dataclasses.asdict(info), epoch=3)
    torch.save(ck, tmp_path / "ck.pth")
    loaded = scnet.load_model(file=str(tmp_path / "ck.pth"))
    assert loaded.label == "scnet_demo (trained)" and loaded.info == dataclasses.replace(info, arch="scnet_demo") and _same_weights(loaded.model, state)
    assert loaded.checkpoint["epoch"] == 3
    assert _same_weights(scnet.load_model(file=str(tmp_path / "ck.pth"), use_ema=True).model, ema)
    with pytest.raises(ValueError, match="ck.pth holds scnet_demo, not scnet50"):
        scnet.load_model("scnet50", file=str(tmp_path / "ck.pth"))
    del ck["model_ema"]
    torch.save(ck, tmp_path / "no-ema.pth")
    with pytest.raises(ValueError, match="has no EMA weights"):
        scnet.load_model(file=str(tmp_path / "no-ema.pth"), use_ema=True)


def test_a_name_alone_and_a_dataset_shape() -> None:
    info = DataInfo("toy", 3, 1, 32, (0.5,), (0.25,), ("a", "b", "c"))
    loaded = scnet.load_model("scnet_demo", data_info=info)
    assert loaded.label == "scnet_demo (init)" and loaded.info == dataclasses.replace(info, arch="scnet_demo")
    assert loaded.model.conv1.in_channels == 1 and loaded.model.fc.out_features == 3
    with pytest.raises(ValueError, match="give a model name or a checkpoint"):
        scnet.load_model()


def test_the_spec_carries_the_resize_interpolation(tmp_path: Path) -> None:
    """What a model expects travels as one object: a checkpoint's description with bicubic resizing comes back with
    it, and the one preparation (``eval_transform``) resizes as it says: the image torchvision's bicubic resize and
    centre crop make, normalised (restated here), not the bilinear one."""
    from PIL import Image
    from torchvision.transforms import v2 as T

    from scnet.data import eval_transform

    info = DataInfo("toy", 4, 3, 16, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), ("a", "b", "c", "d"), crop_pct=0.8, interpolation="bicubic")
    model = scnet.create_model("scnet_demo", num_classes=4, in_chans=3)
    torch.save(dict(model=model.state_dict(), config=dict(model="scnet_demo"), data_info=dataclasses.asdict(info)), tmp_path / "ck.pth")
    assert scnet.load_model(file=str(tmp_path / "ck.pth")).info == dataclasses.replace(info, arch="scnet_demo")
    image = Image.fromarray((torch.arange(31 * 47 * 3) % 251).reshape(31, 47, 3).to(torch.uint8).numpy())
    pixels = T.CenterCrop(16)(T.Resize(20, interpolation=T.InterpolationMode.BICUBIC, antialias=True)(T.ToImage()(image)))
    want = (pixels.float() / 255 - torch.tensor(info.mean).view(3, 1, 1)) / torch.tensor(info.std).view(3, 1, 1)
    torch.testing.assert_close(eval_transform(info)(image), want)
    assert not torch.allclose(eval_transform(dataclasses.replace(info, interpolation="bilinear"))(image), want)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        dataclasses.replace(info, interpolation="lanczos")


# ---- the one spec -------------------------------------------------------------------------------------------------
def test_timm_prepares_an_image_as_the_spec_does() -> None:
    """timm's config is derived from the spec, so timm's own evaluation transform (built from the model's
    pretrained_cfg by timm) and the spec's make the same tensor of a photograph-sized image."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from scnet.models.scnet import default_spec
    from scnet.models.spec import IMAGENET_CROP_PCT

    spec = default_spec("scnet50")
    assert spec is scnet.PRETRAINED["scnet50"] and spec.crop_pct == IMAGENET_CROP_PCT == 0.875 and spec.resize_side == 256
    cfg = resolve_data_config({}, model=scnet.create_model("scnet50"))
    assert (cfg["input_size"], cfg["crop_pct"], cfg["interpolation"]) == ((3, 224, 224), 0.875, "bilinear")
    image = Image.fromarray((torch.arange(300 * 260 * 3) % 253).reshape(300, 260, 3).to(torch.uint8).numpy())
    torch.testing.assert_close(spec.transform()(image), create_transform(**cfg)(image), atol=1e-5, rtol=0)
    demo = resolve_data_config({}, model=scnet.create_model("scnet_demo"))
    assert (demo["input_size"], demo["crop_pct"]) == ((3, 32, 32), 1.0)


def test_an_exported_release_carries_its_spec(tmp_path: Path) -> None:
    """``scnet export --format safetensors`` of a 3-class grey model: loading the file by name gives back its
    classes, channels and normalisation, and all its weights (the classifier too, not a fresh 1000-class one)."""
    from scnet.export import export_safetensors

    info = DataInfo("toy", 3, 1, 32, (0.5,), (0.25,), ("a", "b", "c"))
    model = scnet.create_model("scnet_demo", num_classes=3, in_chans=1)
    state = seeded_state_dict(model.state_dict(), seed=3)
    model.load_state_dict(state)
    export_safetensors(model, "scnet_demo", tmp_path / "toy.safetensors", info)
    loaded = scnet.load_model("scnet_demo", file=str(tmp_path / "toy.safetensors"))
    assert loaded.info == dataclasses.replace(info, arch="scnet_demo") and _same_weights(loaded.model, state)


def test_a_stored_spec_keeps_its_format() -> None:
    """A dataset's description is stored with the ten keys it always had (older readers take it); the model's
    fields join only when set; one stored before crop_pct existed gets ImageNet's crop; unknown keys are refused."""
    from scnet.models.spec import ModelSpec

    info = DataInfo("toy", 3, 1, 32, (0.5,), (0.25,), ("a", "b", "c"))
    assert list(info.to_dict()) == ["name", "num_classes", "in_chans", "image_size", "mean", "std", "classes",
                                    "skipped_images", "crop_pct", "interpolation"]
    built = dataclasses.replace(info, arch="scnet_demo", model_args=dict(drop_path_rate=0.1))
    assert built.to_dict()["arch"] == "scnet_demo" and ModelSpec.from_dict(built.to_dict()) == built
    old = dict(name="imagenet", num_classes=2, in_chans=3, image_size=224, mean=[0.5] * 3, std=[0.2] * 3, classes=["x", "y"])
    assert ModelSpec.from_dict(old).crop_pct == 0.875 and ModelSpec.from_dict(dict(old, name="toy")).crop_pct == 1.0
    with pytest.raises(ValueError, match=r"unknown entries \['colour'\]"):
        ModelSpec.from_dict(dict(old, colour="red"))
    grouped = dataclasses.replace(built, model_args=dict(norm_layer=torch.nn.GroupNorm)).metadata()  # a class from Python
    assert "GroupNorm" in grouped["data_info"] and grouped["arch"] == "scnet_demo" and grouped["input_size"] == "[1, 32, 32]"
