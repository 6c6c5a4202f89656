"""timm's Hub layout: ``scnet export --format hf`` writes it, timm and scnet rebuild the same model from it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

import scnet
from scnet.cli import main
from scnet.train import fit, merge_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hub") / "run"
    fit(merge_config(flags=dict(data="synthetic", epochs=1, batch_size=32, out=str(out), stem_type="small")), show_progress=False,
        log=lambda *a: None)
    return out


@pytest.mark.parametrize("source", ["checkpoint-best.pth", "weights-best.safetensors"])
def test_trained_model_to_hub_layout_and_back(trained: Path, tmp_path: Path, source: str) -> None:
    folder = tmp_path / "hub"
    assert main(["export", "--checkpoint", str(trained / source), "--format", "hf", "--out", str(folder)]) == 0
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "scnet_demo" and config["num_classes"] == 4
    assert config["model_args"].items() >= {"stem_type": "small", "in_chans": 1}.items()  # timm adds num_classes, global_pool
    cfg = config["pretrained_cfg"]
    assert (cfg["input_size"], cfg["mean"], cfg["std"], cfg["label_names"]) == ([1, 16, 16], [0.5], [0.25], ["a", "b", "c", "d"])
    original = scnet.load_model(file=str(trained / source)).model
    by_timm = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    by_scnet = scnet.create_model(f"local-dir:{folder}").eval()
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = original(x)
        assert (by_timm(x) - want).abs().max().item() == 0.0
        assert (by_scnet(x) - want).abs().max().item() == 0.0
    loaded = scnet.load_model(f"local-dir:{folder}")
    assert loaded.info.classes == ("a", "b", "c", "d") and loaded.info.mean == (0.5,) and loaded.arch == "scnet_demo"


def test_hub_references_refuse_what_they_cannot_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no config.json, so it is not a model folder in timm's Hub layout"):
        scnet.create_model(f"local-dir:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps(dict(architecture="scnet_dmo", num_classes=3)))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="names architecture 'scnet_dmo', which is not an scnet model \\(did you mean scnet_demo"):
        scnet.create_model(f"local-dir:{tmp_path}")
    assert main(["export", "--model", "resnet18", "--format", "hf", "--out", str(tmp_path / "tv")]) == 2  # not a timm name
