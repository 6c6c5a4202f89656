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


def test_bare_weights_of_a_one_channel_model_export_with_their_normalisation(tmp_path: Path, capsys) -> None:
    """Bare weights carry no mean/std: a 1-channel model gets the mean of ImageNet's (0.449, 0.226), or what is given."""
    model = scnet.create_model("scnet_demo", in_chans=1, num_classes=7)
    weights = tmp_path / "w.pth"
    torch.save(model.state_dict(), weights)
    base = ["export", "--model", "scnet_demo", "--checkpoint", str(weights), "--format", "hf", "--in-chans", "1", "--num-classes", "7"]
    assert main([*base, "--out", str(tmp_path / "default")]) == 0
    cfg = json.loads((tmp_path / "default" / "config.json").read_text())["pretrained_cfg"]
    imagenet_mean, imagenet_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    assert cfg["mean"] == pytest.approx([sum(imagenet_mean) / 3]) and cfg["std"] == pytest.approx([sum(imagenet_std) / 3])
    assert main([*base, "--mean", "0.3", "--std", "0.4", "--out", str(tmp_path / "given")]) == 0
    cfg = json.loads((tmp_path / "given" / "config.json").read_text())["pretrained_cfg"]
    assert cfg["mean"] == [0.3] and cfg["std"] == [0.4]
    rebuilt = scnet.create_model(f"local-dir:{tmp_path / 'given'}")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))
    capsys.readouterr()
    assert main([*base, "--mean", "0.3", "0.2", "--out", str(tmp_path / "bad")]) == 2
    assert "--mean needs one value per input channel (1), got 2" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (dict(num_classes=10 ** 9), "config.json describes fc.weight as (1000000000, "),  # once: 3 TB asked for
    (dict(num_classes=2_000_000), "config.json describes fc.weight as (2000000, "),  # once: 6.1 GB for a 2-class model
    (dict(num_classes=1e9), "num_classes must be a positive integer, got 1000000000.0"),
    (dict(num_classes=True), "num_classes must be a positive integer, got True"),
    (dict(model_args=dict(in_chans=1, stem_type="small", no_such_option=3)), "model_args are not arguments of scnet_demo"),
    (dict(model_args=dict(in_chans=3, stem_type="small")), "config.json describes"),  # the weights are for one channel
    (dict(pretrained_cfg="imagenet"), "config.json's pretrained_cfg must be an object of names and values, got str imagenet"),
    (dict(label_names="cat"), "label_names must be a list of names"),
])
def test_a_hub_config_that_does_not_describe_its_weights_is_refused_before_building(trained: Path, tmp_path: Path, change: dict,
                                                                                      message: str) -> None:
    import resource

    folder = tmp_path / "hub"
    assert main(["export", "--checkpoint", str(trained / "checkpoint-best.pth"), "--format", "hf", "--out", str(folder)]) == 0
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    used = next(int(line.split()[1]) << 10 for line in open("/proc/self/status") if line.startswith("VmSize"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (used + (4 << 30), hard))  # gigabytes more would fail here, not in the machine
    try:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            scnet.create_model(f"local-dir:{folder}")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
