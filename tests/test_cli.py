"""The ``scnet`` command line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scnet.cli import main


def test_info_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "--models", "scnet50*", "--format", "json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"scnet50", "scnet50_plain", "scnet50_v1d", "scnet50_v1d_plain"}
    assert rows["scnet50"]["params"] == 25_564_584 and rows["scnet50"]["GMACs"] == 3.925
    assert rows["scnet50_v1d"]["weights"] == "scnet50_v1d-4109d1e1.pth" and rows["scnet50_plain"]["top1"] is None
    assert rows["scnet50_v1d"]["official"] == "same outputs" and rows["scnet50_plain"]["official"] is None
    assert rows["scnet50"]["recipe"] == "imagenet/scnet50"  # the bundled config of that name


def test_info_markdown_and_errors(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "--models", "scnet101", "--input-size", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| model | params") and lines[2].startswith("| scnet101 | 44,565,416 |")
    assert main(["info", "--models", "nothing*"]) == 2
    assert "no model matches 'nothing*'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:  # argparse's one-line error, after the usage line
        main(["info", "--input-size", "8"])
    assert done.value.code == 2 and "argument --input-size: must be from 32 to 4,096, got 8" in capsys.readouterr().err


def test_python_dash_m_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "scnet", "info", "--models", "scnet50", "--format", "table"],
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[1].split()[:3] == ["scnet50", "25,564,584", "3.925"]


def test_every_train_config_field_has_a_flag_with_help() -> None:
    """The train and compare flags are made from TrainConfig: one field, one flag, with its help text."""
    import dataclasses

    from scnet.cli import build_parser
    from scnet.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command in ("train", "compare"):
        actions = {a.dest: a for a in sub[command]._actions}
        assert fields <= set(actions), f"{command} lacks {sorted(fields - set(actions))}"
        assert all(actions[name].help and "{default}" not in actions[name].help for name in fields)
    train_only = set(a.dest for a in sub["train"]._actions) - fields
    assert train_only == {"help", "config", "debug"}  # nothing hand-written beside the generated flags
    args = build_parser().parse_args(["train", "--momentum", "0.5", "--amp", "--schedule", "cosine"])
    assert (args.momentum, args.amp, args.schedule, args.lr) == (0.5, True, "cosine", None)


def test_version_is_written_once_and_printed(capsys: pytest.CaptureFixture) -> None:
    import tomllib
    from pathlib import Path

    import scnet

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]  # read from scnet.__version__
    assert project["name"] == "scnet-pytorch"  # "scnet" on PyPI is another project
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"scnet {scnet.__version__} (distribution scnet-pytorch)"
