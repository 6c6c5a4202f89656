"""Careless input to the tools: every case is one line (exit 2), changes nothing, and never leaves a NaN result."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from scnet.cli import main
from scnet.files import read_checkpoint

TRAIN = ["train", "--data", "synthetic", "--batch-size", "32", "--lr", "0.05"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad-input") / "run"
    assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    return out


def _error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_batch_larger_than_the_data_is_refused(tmp_path: Path, capsys) -> None:
    assert main(["train", "--data", "synthetic", "--batch-size", "4096", "--out", str(tmp_path / "run")]) == 2
    assert "--batch-size 4096 is larger than the 256 training images; use at most 256" in _error(capsys)
    assert not (tmp_path / "run").exists()


def test_an_absurd_learning_rate_is_refused(tmp_path: Path, capsys) -> None:
    assert main([*TRAIN[:-2], "--lr", "1e308", "--out", str(tmp_path / "run")]) == 2
    assert "--lr must be <= 1000, got 1e+308" in _error(capsys)


def test_a_non_finite_validation_loss_is_never_saved_as_best(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import scnet.train.runner as runner

    real, calls = runner.evaluate, []

    def overflowing(*args, **kwargs):  # finite weights whose outputs overflow in the second epoch's validation
        result = real(*args, **kwargs)
        calls.append(1)
        return {**result, "loss": float("nan")} if len(calls) == 2 else result

    monkeypatch.setattr(runner, "evaluate", overflowing)
    out = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "2", "--out", str(out)]) == 2
    assert "validation loss is nan after epoch 2" in _error(capsys)
    assert read_checkpoint(out / "checkpoint-last.pth")["epoch"] == 1 and read_checkpoint(out / "checkpoint-best.pth")["epoch"] == 1


def test_predict_never_prints_a_nan_result(tmp_path: Path, run: Path, capsys) -> None:
    from PIL import Image

    state = read_checkpoint(run / "checkpoint-last.pth")
    state["model"]["fc.weight"][0, 0] = float("nan")
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    Image.new("L", (16, 16), 100).save(tmp_path / "x.png")
    for fmt in ("text", "json"):
        assert main(["predict", str(tmp_path / "x.png"), "--checkpoint", str(broken), "--format", fmt]) == 2
        err = _error(capsys)
        assert "outputs for" in err and "are not finite" in err and "nan%" not in err
    assert main(["predict", str(tmp_path / "x.png"), "--checkpoint", str(run / "checkpoint-last.pth"), "--format", "json"]) == 0
    json.loads(capsys.readouterr().out)  # valid JSON (NaN would not be)


def test_eval_refuses_data_with_other_classes(run: Path, capsys) -> None:
    assert main(["eval", "--checkpoint", str(run / "checkpoint-last.pth"), "--data", "fashion_mnist", "--limit-val", "64"]) == 2
    assert "was trained on synthetic (4 classes: a, b, c, d); fashion_mnist has other classes (10:" in _error(capsys)


def test_eval_refuses_a_batch_size_of_zero(run: Path, capsys) -> None:
    assert main(["eval", "--checkpoint", str(run / "checkpoint-last.pth"), "--batch-size", "0"]) == 2
    assert "--batch-size must be a positive integer, got 0" in _error(capsys)


def test_export_never_writes_over_its_input(run: Path, capsys) -> None:
    before = (run / "checkpoint-last.pth").read_bytes()
    assert main(["export", "--checkpoint", str(run / "checkpoint-last.pth"), "--out", str(run / "checkpoint-last.pth")]) == 2
    assert "is the checkpoint being exported" in _error(capsys)
    assert (run / "checkpoint-last.pth").read_bytes() == before


def test_a_folder_given_as_a_checkpoint_is_said_to_be_one(run: Path, capsys) -> None:
    assert main(["eval", "--checkpoint", str(run)]) == 2
    assert f"{run} is a directory; give a checkpoint file inside it, e.g. {run / 'checkpoint-best.pth'}" in _error(capsys)


def test_random_bytes_are_damaged_not_dangerous(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(random.Random(0).randbytes(4096))  # deterministic noise
    assert main(["eval", "--checkpoint", str(junk)]) == 2
    err = _error(capsys)
    assert "is damaged or not a torch checkpoint" in err and "could run code" not in err
