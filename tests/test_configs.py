"""The shipped configs: the paper's ImageNet recipe for SCNet-50/101, the v1d variants and their plain twins."""
from __future__ import annotations

import os
import re
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

_FOLDER = Path(scnet.__file__).parent / "configs" / "imagenet"
CONFIGS = sorted(p for p in _FOLDER.glob("*.yaml") if p.stem != "paper-recipe" and not p.stem.startswith("rsb-"))
RSB = sorted(_FOLDER.glob("rsb-*.yaml"))


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


def test_every_configs_model_builds_for_its_recipe() -> None:
    """Each file's model exists and builds with the recipe's options (on the meta device: no memory); the files
    differ only in the model, whose training step every model's sweep tests, so one of them trains below."""
    for path in [*CONFIGS, *RSB]:
        cfg = merge_config(load_yaml(str(path)))
        with torch.device("meta"):
            model = scnet.create_model(cfg.model, num_classes=2, drop_path_rate=cfg.drop_path)
        assert model.num_classes == 2, path.stem


@pytest.mark.slow
def test_the_paper_recipe_runs_a_few_steps_on_a_tiny_imagefolder(tiny_imagefolder: Path, tmp_path: Path) -> None:
    config, out = _FOLDER / "scnet50.yaml", tmp_path / "run"
    assert main(["train", "--config", str(config), "--data-dir", str(tiny_imagefolder), "--image-size", "64", "--batch-size", "4",
                 "--epochs", "1", "--workers", "0", "--out", str(out)]) == 0
    state = read_checkpoint(out / "checkpoint-last.pth")
    assert state["config"]["model"] == config.stem and state["step"] == 0 and len(state["history"]) == 1
    assert state["history"][0]["lr"] == pytest.approx(0.1) and state["config"]["decay_all"] is True


def test_the_resnet_strikes_back_recipes_carry_the_papers_settings() -> None:
    """A2 and A3 as Table 1 of "ResNet strikes back" gives them (re-stated here), for SCNet-50 and its twin alike."""
    assert {p.stem for p in RSB} == {f"rsb-{r}{m}" for r in ("a2", "a3") for m in ("", "-scnet50", "-scnet50_plain")}
    common = dict(opt="lamb", batch_size=2048, schedule="cosine", warmup_epochs=5, bce_loss=True, label_smoothing=0.0,
                  mixup=0.1, cutmix=1.0, weight_decay=0.02, amp=True, decay_all=False)
    papers = dict(a2=dict(epochs=300, lr=5e-3, image_size=224, drop_path=0.05, auto_augment="rand-m7-mstd0.5-inc1"),
                  a3=dict(epochs=100, lr=8e-3, image_size=160, drop_path=0.0, auto_augment="rand-m6-mstd0.5-inc1"))
    for recipe, own in papers.items():
        for model in ("scnet50", "scnet50_plain"):
            cfg = merge_config(load_yaml(f"imagenet/rsb-{recipe}-{model}"))
            assert cfg.model == model and {k: getattr(cfg, k) for k in {**common, **own}} == {**common, **own}


@pytest.mark.slow
def test_the_a3_recipe_runs_a_few_steps_on_a_tiny_imagefolder(tiny_imagefolder: Path, tmp_path: Path) -> None:
    """RandAugment on PIL images, mixup/cutmix, LAMB and BCE through the ImageFolder path, resumable config and all."""
    out = tmp_path / "run"
    assert main(["train", "--config", "imagenet/rsb-a3-scnet50", "--data-dir", str(tiny_imagefolder), "--image-size", "64",
                 "--batch-size", "4", "--lr", "0.001", "--epochs", "1", "--warmup-epochs", "0", "--workers", "0", "--no-amp",
                 "--out", str(out)]) == 0
    state = read_checkpoint(out / "checkpoint-last.pth")
    assert state["config"]["auto_augment"] == "rand-m6-mstd0.5-inc1" and state["config"]["cutmix"] == 1.0
    assert np.isfinite(state["history"][0]["train_loss"])


def test_a_bundled_recipe_is_found_by_name_and_a_file_of_that_path_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert bundled_configs() == sorted(f"imagenet/{p.stem}" for p in [*CONFIGS, *RSB, CONFIGS[0].with_name("paper-recipe.yaml")])
    by_name, by_file = load_yaml("imagenet/scnet50"), load_yaml(str(CONFIGS[0].with_name("scnet50.yaml")))
    assert by_name == by_file and by_name["model"] == "scnet50" and by_name["epochs"] == 100  # with its base's options
    assert config_path("imagenet/scnet50.yaml") == config_path("imagenet/scnet50")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "scnet50").write_text("model: scnet_demo\n")
    assert load_yaml("imagenet/scnet50") == {"model": "scnet_demo"}
    with pytest.raises(ConfigError, match="no bundled recipe of that name; bundled: imagenet/paper-recipe, imagenet/rsb-a2, "):
        load_yaml("imagenet/scnet51")


# ---- bounded, typed YAML ------------------------------------------------------------------------------------------
def _yaml(tmp_path, text: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_yaml_alias_bomb_is_refused_before_anything_expands_it(tmp_path, capsys) -> None:
    """370 bytes, 9^8 = 43 million values once expanded: refused from the graph, in well under a second."""
    import time

    from scnet.cli import main

    levels = ["&a [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [f"&{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefg", "bcdefgh")]
    path = _yaml(tmp_path, f"lr: [{', '.join(levels)}]\n")
    assert path.stat().st_size < 1000
    start = time.perf_counter()
    assert main(["train", "--config", str(path), "--data", "synthetic", "--out", str(tmp_path / "run")]) == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err.strip()
    assert len(err) < 300 and "more than 10,000 values once its aliases" in err


def test_messages_show_a_bounded_value() -> None:
    from scnet.train.config import ConfigError, merge_config, shown

    nested = [[list(range(1000))] * 1000] * 1000  # a billion items if written out
    assert len(shown(nested)) <= 80
    with pytest.raises(ConfigError) as caught:
        merge_config(flags=dict(lr=nested))
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("text, message", [
    ('amp: "false"\n', re.escape("amp must be true or false, got 'false' (a string: write it without quotes)")),
    ('channels_last: "no"\n', "channels_last must be true or false, got 'no'"),
    ("nesterov: 0\n", "nesterov must be true or false, got 0"),
    ("data_dir: 5\n", "data_dir must be a string, got 5"),
    ("out: [a, b]\n", re.escape("out must be a string, got ['a', 'b']")),
    ("1: x\n", "key 1 in .* is not a name"),
    ("base: c.yaml\nepochs: 2\n", "c.yaml is its own base"),
    ("base: 3\n", "base in .* must name a YAML file, got 3"),
    ("schedule: step\nlr_milestones: [60, 30]\nepochs: 90\n", re.escape("lr_milestones must ascend, each epoch once, got [60, 30]")),
    ("epochs: 2\nwarmup_epochs: 5\n", "warmup_epochs 5 is longer than the run's 2 epochs"),
])
def test_yaml_values_are_typed(tmp_path, text: str, message: str) -> None:
    from scnet.train.config import ConfigError, load_yaml, merge_config

    with pytest.raises(ConfigError, match=message):
        merge_config(load_yaml(str(_yaml(tmp_path, text))))


def test_a_yaml_file_that_is_not_a_config_is_one_line(tmp_path) -> None:
    from scnet.train.config import MAX_YAML_BYTES, ConfigError, load_yaml

    big = tmp_path / "big.yaml"
    big.write_text("epochs: 1\n" + "#" * MAX_YAML_BYTES)
    with pytest.raises(ConfigError, match="a config file is at most"):
        load_yaml(str(big))
    (tmp_path / "bin.yaml").write_bytes(b"epochs: \xff\xfe\x00")  # not UTF-8
    with pytest.raises(ConfigError, match="cannot read config"):
        load_yaml(str(tmp_path / "bin.yaml"))
    with pytest.raises(ConfigError, match="a config file is named by a path, got 5"):
        load_yaml(5)


def test_an_oversized_seed_is_refused() -> None:
    from scnet.train.config import ConfigError, merge_config

    with pytest.raises(ConfigError, match="^seed must be <= 9223372036854775807"):
        merge_config(flags=dict(seed=10 ** 24))


def test_errors_name_keywords_for_the_library_and_flags_for_the_command_line(capsys) -> None:
    """The library words an error about the value and names the setting as its caller did (the keyword); the CLI
    words the same error with the flag. A worker process's error keeps both wordings."""
    import pickle

    from scnet.cli import main
    from scnet.errors import flag
    from scnet.train.config import ConfigError, merge_config

    with pytest.raises(ConfigError) as caught:
        merge_config(flags=dict(model="scnet_demo", data="synthetic", batch_size=0))
    assert str(caught.value) == "batch_size must be a positive integer, got 0"
    assert caught.value.worded(flag) == "--batch-size must be a positive integer, got 0"
    again = pickle.loads(pickle.dumps(caught.value))
    assert type(again) is ConfigError and again.worded(flag) == caught.value.worded(flag)
    assert main(["train", "--data", "synthetic", "--batch-size", "0"]) == 2
    assert "error: --batch-size must be a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("make, message", [
    (lambda tmp: Path("/dev/zero"), "/dev/zero is not a regular file"),  # its size reads as 0: it would fill memory
    (lambda tmp: (os.mkfifo(tmp / "pipe.yaml"), tmp / "pipe.yaml")[1], "pipe.yaml is not a regular file"),  # would wait forever
    (lambda tmp: tmp, "is not a regular file"),
])
def test_a_base_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture, make, message: str) -> None:
    import signal

    base = make(tmp_path)
    path = _yaml(tmp_path, f"base: {base}\nepochs: 1\n")
    signal.alarm(30)  # a hang fails the test instead of the suite
    try:
        assert main(["train", "--config", str(path), "--data", "synthetic", "--out", str(tmp_path / "run")]) == 2
    finally:
        signal.alarm(0)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_deeply_nested_yaml_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for depth in (5000, 40):  # past the reader's recursion, and past the bound
        path = _yaml(tmp_path, "lr: " + "[" * depth + "]" * depth + "\n")
        assert main(["train", "--config", str(path), "--data", "synthetic", "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "nests its values more than 32 levels deep" in err, err
