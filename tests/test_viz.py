"""Grad-CAM and effective receptive fields: exact footprints, clear errors, any image, the CLI's files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import scnet
from scnet.cli import main
from scnet.viz import FeatureMap, erf, erf_area_ratios, gradcam, stage_names


def _conv(cin: int, cout: int, seed: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(seed)))
    return conv


def test_erf_of_one_3x3_conv_is_its_footprint() -> None:
    conv = _conv(2, 3, 0)
    got = erf(conv, input_size=(2, 9, 9), num_samples=5)
    # d(sum_o y[o, 4, 4]) / dx[c, 3 + i, 3 + j] = sum_o W[o, c, i, j] (cross-correlation), the same for every input.
    expected = np.zeros((9, 9))
    expected[3:6, 3:6] = conv.weight.detach().double().sum(dim=0).abs().sum(dim=0).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def test_erf_of_two_stacked_3x3_convs_is_5x5() -> None:
    got = erf(nn.Sequential(_conv(2, 4, 1), _conv(4, 3, 2)), input_size=(2, 11, 11), num_samples=3)
    support = got > 0
    expected = np.zeros((11, 11), dtype=bool)
    expected[3:8, 3:8] = True
    assert (support == expected).all()
    ratios = erf_area_ratios(got)
    assert ratios["99%"]["side"] <= 5 and ratios["99%"]["area_ratio"] <= 25 / 121


class _Constant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.ones(1, 2, 4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(x.shape[0], -1, -1, -1)


class _Zeroed(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.0


@pytest.mark.parametrize("model", [_Constant(), _Zeroed()], ids=["no-graph", "zero-gradient"])
def test_erf_of_a_model_that_ignores_its_input_is_a_clear_error(model: nn.Module) -> None:
    with pytest.raises(ValueError, match="does not depend on the input"):
        erf(model, input_size=(2, 8, 8), num_samples=2)


def test_erf_needs_a_feature_map_and_sane_arguments() -> None:
    classifier = scnet.create_model("scnet_demo", num_classes=3).eval()
    with pytest.raises(ValueError, match=r"feature maps \(N, K, h, w\); it returned \(1, 3\)"):
        erf(classifier, input_size=(3, 32, 32), num_samples=1)
    with pytest.raises(ValueError, match="num_samples"):
        erf(classifier, num_samples=0)
    with pytest.raises(ValueError, match="no submodule 'layer9'"):
        FeatureMap(classifier, "layer9")


def test_area_ratios_restate_the_definition() -> None:
    delta = np.zeros((9, 9))
    delta[4, 4] = 1.0
    assert all(r == dict(side=1, area_ratio=1 / 81) for r in erf_area_ratios(delta).values())
    uniform = erf_area_ratios(np.ones((9, 9)))
    # A centred square of side s holds s^2/81 of a uniform map: 20% needs 5x5 (25/81), 50% 7x7 (49/81), 99% all.
    assert uniform["20%"]["side"] == 5 and uniform["50%"]["side"] == 7 and uniform["99%"] == dict(side=9, area_ratio=1.0)


def test_erf_grows_with_depth_in_a_real_model() -> None:
    torch.manual_seed(0)
    model = scnet.create_model("scnet_demo").eval()
    names = stage_names(model)
    assert names == ["layer1", "layer2", "layer3", "layer4"]
    yy, xx = np.mgrid[:48, :48]
    distance2 = (yy - 24) ** 2 + (xx - 24) ** 2

    def spread(field: np.ndarray) -> float:  # mean squared distance from the centre, weighted by the field
        return float((field * distance2).sum() / field.sum())

    fields = [erf(FeatureMap(model, n), (3, 48, 48), num_samples=4) for n in names[:3]]
    assert spread(fields[0]) < spread(fields[1]) < spread(fields[2])
    ratios = [erf_area_ratios(f)["99%"]["area_ratio"] for f in fields]
    assert ratios[0] <= ratios[1] <= ratios[2]


def test_gradcam_shapes_range_and_classes() -> None:
    torch.manual_seed(0)
    model = scnet.create_model("scnet_demo", num_classes=5)
    x = torch.randn(3, 3, 40, 52)
    result = gradcam(model, x)
    assert result.cams.shape == (3, 40, 52) and result.cams.dtype == np.float32 and result.layer == "layer4"
    assert result.cams.min() >= 0.0 and result.cams.max() <= 1.0 + 1e-6
    with torch.no_grad():
        assert result.classes == model(x).argmax(1).tolist()
    chosen = gradcam(model, x, layer="layer3", classes=[0, 4, 2])
    assert chosen.classes == [0, 4, 2] and chosen.layer == "layer3"
    with pytest.raises(ValueError, match="class 7 is out of range"):
        gradcam(model, x, classes=7)
    with pytest.raises(ValueError, match="no layer 'head'"):
        gradcam(model, x, layer="head")


def _images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    gradient = np.linspace(0, 1, 50 * 30).reshape(30, 50)
    files = {
        "gray.png": Image.fromarray((gradient * 255).astype(np.uint8), mode="L"),
        "rgba.png": Image.new("RGBA", (40, 64), (200, 30, 30, 128)),
        "deep16.png": Image.fromarray((gradient * 65535).astype(np.uint16)),  # 16-bit grayscale
        "palette.gif": Image.new("P", (33, 33), 3),
    }
    for name, img in files.items():
        img.save(folder / name)
    assert Image.open(folder / "deep16.png").mode.startswith("I")
    return [folder / n for n in files]


@pytest.mark.slow
def test_cam_cli_any_image_mode_and_a_torchvision_baseline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images = _images(tmp_path / "in")
    out = tmp_path / "cam"
    assert main(["cam", *map(str, images), "--model", "scnet_demo", "--baseline", "resnet18", "--out", str(out)]) == 0
    summary = json.loads((out / "cam.json").read_text())
    assert [len(e["models"]) for e in summary["images"]] == [2] * 4
    assert [m["model"] for m in summary["images"][0]["models"]] == ["scnet_demo (init)", "resnet18 (init)"]
    for image in images:
        assert (out / f"{image.stem}-cam.png").stat().st_size > 5_000
    assert (out / "contact_sheet.png").stat().st_size > 20_000
    (tmp_path / "notes.txt").write_text("not an image")
    assert main(["cam", str(tmp_path / "notes.txt"), "--model", "scnet_demo", "--out", str(out)]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.slow
def test_cam_and_erf_of_trained_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from scnet.train import fit, merge_config

    runs = {}
    for name in ("scnet_demo", "scnet_demo_plain"):
        runs[name] = tmp_path / name
        fit(merge_config(flags=dict(model=name, data="synthetic", epochs=1, batch_size=32, lr=0.05, out=str(runs[name]))),
            show_progress=False, log=lambda *a: None)
    sc, plain = (str(runs[n] / "checkpoint-last.pth") for n in ("scnet_demo", "scnet_demo_plain"))
    img = tmp_path / "digit.png"
    Image.new("L", (16, 16), 90).save(img)
    assert main(["cam", str(img), "--checkpoint", sc, "--baseline-checkpoint", plain, "--out", str(tmp_path / "cam")]) == 0
    assert main(["erf", "--checkpoint", sc, "--baseline-checkpoint", plain, "--data", "synthetic", "--num-samples", "6",
                 "--out", str(tmp_path / "erf")]) == 0
    report = json.loads((tmp_path / "erf" / "erf.json").read_text())
    assert set(report["ratios"]) == {"scnet_demo (trained)", "scnet_demo_plain (trained)"}
    assert set(report["ratios"]["scnet_demo (trained)"]) == {"layer1", "layer2", "layer3", "layer4"}
    assert "6 synthetic validation images at 16x16 px" in report["inputs"]
    md = (tmp_path / "erf" / "erf.md").read_text()
    assert "| layer2 | scnet_demo_plain (trained) |" in md and (tmp_path / "erf" / "erf.png").stat().st_size > 20_000
    maps = np.load(tmp_path / "erf" / "erf.npz")
    assert maps["scnet_demo (trained)/layer1"].shape == (16, 16)
    # At initialisation on the same images: the models are built for the dataset's 1 channel and 4 classes.
    assert main(["erf", "--model", "scnet_demo", "--baseline", "scnet_demo_plain", "--data", "synthetic", "--num-samples", "4",
                 "--stages", "layer1", "layer2", "--out", str(tmp_path / "erf-init")]) == 0
    assert "scnet_demo (init): layer1" in capsys.readouterr().out


def test_cam_mask_overlap_restates_its_definitions() -> None:
    from scnet.viz import cam_mask_overlap

    cams = np.array([[[1.0, 0.6], [0.2, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    masks = np.array([[[True, False], [True, False]], [[False, True], [False, False]]])
    r = cam_mask_overlap(cams, masks)
    np.testing.assert_allclose(r["mass_on_object"], [(1.0 + 0.2) / 1.8, 0.0])  # an all-zero map puts nothing anywhere
    np.testing.assert_allclose(r["object_covered"], [1 / 2, 0.0])
    np.testing.assert_allclose(r["area"], [2 / 4, 0.0])
    with pytest.raises(ValueError, match="at least one object pixel"):
        cam_mask_overlap(cams, np.zeros_like(masks))


def test_baselines_by_torchvision_and_timm_names() -> None:
    from scnet.models import create_any_model

    tv, tm = create_any_model("resnet18"), create_any_model("resnet10t", num_classes=3)
    assert type(tv).__module__.startswith("torchvision") and type(tm).__module__.startswith("timm")
    assert stage_names(tv) == stage_names(tm) == ["layer1", "layer2", "layer3", "layer4"]
    field = erf(FeatureMap(tm.eval(), "layer1"), (3, 40, 40), num_samples=2)
    assert field.shape == (40, 40) and field[20, 20] > 0
    with pytest.raises(ValueError, match="unknown model 'resnet5O'.*did you mean"):
        create_any_model("resnet5O")


# ---- localization ------------------------------------------------------------------------------------------------
def test_box_scores_restate_the_pointing_and_energy_games() -> None:
    from scnet.viz import box_scores

    cams = np.zeros((4, 6, 6))
    cams[0, 2, 3] = 1.0  # peak inside the box rows 1-3, cols 2-4
    cams[0, 5, 5] = 0.5
    cams[1, 0, 0] = 1.0  # peak outside; a third of the mass inside
    cams[1, 2, 2] = 0.5
    cams[2, 1:4, 2:5] = 0.2  # flat inside, nothing outside: every pixel of the plateau is inside
    boxes = np.array([[1, 2, 4, 5]] * 4)  # end exclusive
    scores = box_scores(cams, boxes)  # image 3: an empty map
    assert scores["pointing"].tolist() == [True, False, True, False]
    assert scores["energy"] == pytest.approx([1.0 / 1.5, 0.5 / 1.5, 1.0, 0.0])
    with pytest.raises(ValueError, match="cams \\(N, H, W\\) and boxes \\(N, 4\\)"):
        box_scores(cams, boxes[:3])
    with pytest.raises(ValueError, match="negative"):
        box_scores(-cams - 1, boxes)


def test_localization_of_a_model_over_a_dataset_with_boxes() -> None:
    from scnet.data import TensorImages
    from scnet.viz import box_scores, localization

    torch.manual_seed(0)
    model = scnet.create_model("scnet_demo", in_chans=1, num_classes=3).eval()
    images = (torch.rand(10, 1, 40, 40) * 255).to(torch.uint8)
    labels = torch.arange(10) % 3
    boxes = torch.tensor([[5, 5, 30, 30]] * 5 + [[0, 0, 40, 40]] * 5)
    data = TensorImages(images, labels, (0.5,), (0.25,), boxes=boxes)
    result = localization(model, data, batch_size=4)
    x, y = data.batch(torch.arange(10))
    expected = box_scores(gradcam(model, x, classes=y.tolist()).cams, boxes.numpy())  # the true class, every image
    assert result["images"] == 10 and result["pointing"] == pytest.approx(100 * expected["pointing"].mean())
    assert result["energy_in_box"] == pytest.approx(100 * expected["energy"].mean())
    assert (result["per_image"]["energy"][5:] == 1.0).all()  # a box of the whole image holds all the evidence
    with pytest.raises(ValueError, match="needs a dataset with object boxes"):
        localization(model, TensorImages(images, labels, (0.5,), (0.25,)))
