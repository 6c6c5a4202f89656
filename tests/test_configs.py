"""The shipped configs: the paper's ImageNet recipe for SCNet-50/101, the v1d variants and their plain twins."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import scnet
from scnet.cli import main
from scnet.files import read_checkpoint
from scnet.train import load_yaml, merge_config
from scnet.train.config import ConfigError, bundled_configs, config_path
from scnet.train.engine import lr_schedule

CONFIGS = sorted(p for p in (Path(scnet.__file__).parent / "configs" / "imagenet").glob("*.yaml") if p.stem != "paper-recipe")


@pytest.fixture(scope="module")
def tiny_imagefolder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes, 4 training and 2 validation images each, 40 x 52 px RGB."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def test_every_model_and_twin_has_a_config() -> None:
    names = {p.stem for p in CONFIGS}
    assert names == {f"{m}{t}" for m in ("scnet50", "scnet101", "scnet50_v1d", "scnet101_v1d") for t in ("", "_plain")}
    for path in CONFIGS:
        cfg = merge_config(load_yaml(str(path)))
        assert cfg.model == path.stem and cfg.data == "imagefolder" and cfg.image_size == 224
        assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.nesterov) == (100, 256, 0.1, 0.9, False)
        assert (cfg.weight_decay, cfg.decay_all, cfg.label_smoothing, cfg.warmup_epochs) == (1e-4, True, 0.1, 0)
        assert (cfg.schedule, cfg.lr_milestones, cfg.lr_gamma) == ("step", [30, 60, 90], 0.1)


def test_step_schedule_gives_the_recipes_learning_rates() -> None:
    cfg = merge_config(load_yaml(str(CONFIGS[0])))
    per_epoch = 3  # any number of steps per epoch
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=cfg.lr)
    shape = lr_schedule(cfg.schedule, 0, cfg.epochs * per_epoch, [m * per_epoch for m in cfg.lr_milestones], cfg.lr_gamma)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, shape)
    lr_at = {}
    for step in range(cfg.epochs * per_epoch):
        if step % per_epoch == 0:
            lr_at[step // per_epoch] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    # The paper's recipe: 0.1, divided by 10 every 30 epochs.
    assert lr_at[0] == lr_at[29] == pytest.approx(0.1)
    assert lr_at[30] == lr_at[59] == pytest.approx(0.01)
    assert lr_at[60] == pytest.approx(0.001) and lr_at[90] == lr_at[99] == pytest.approx(0.0001)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_runs_a_few_steps_on_a_tiny_imagefolder(config: Path, tiny_imagefolder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--data-dir", str(tiny_imagefolder), "--image-size", "64", "--batch-size", "4",
                 "--epochs", "1", "--workers", "0", "--out", str(out)]) == 0
    state = read_checkpoint(out / "checkpoint-last.pth")
    assert state["config"]["model"] == config.stem and state["step"] == 0 and len(state["history"]) == 1
    assert state["history"][0]["lr"] == pytest.approx(0.1) and state["config"]["decay_all"] is True


def test_a_bundled_recipe_is_found_by_name_and_a_file_of_that_path_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert bundled_configs() == sorted(f"imagenet/{p.stem}" for p in [*CONFIGS, CONFIGS[0].with_name("paper-recipe.yaml")])
    by_name, by_file = load_yaml("imagenet/scnet50"), load_yaml(str(CONFIGS[0].with_name("scnet50.yaml")))
    assert by_name == by_file and by_name["model"] == "scnet50" and by_name["epochs"] == 100  # with its base's options
    assert config_path("imagenet/scnet50.yaml") == config_path("imagenet/scnet50")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "scnet50").write_text("model: scnet_demo\n")
    assert load_yaml("imagenet/scnet50") == {"model": "scnet_demo"}
    with pytest.raises(ConfigError, match="no bundled recipe of that name; bundled: imagenet/paper-recipe, imagenet/scnet101"):
        load_yaml("imagenet/scnet51")
