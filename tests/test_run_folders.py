"""A run folder is owned by one run: --resume continues where the checkpoint is (or in a copy), options that
contradict the resumed run are refused, a second run on a used folder is refused and the first's files stay intact,
a dead run's lock is taken over with a note, and a run that fails before writing leaves no folder behind."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scnet.cli import main
from scnet.files import read_checkpoint
from scnet.train import fit, merge_config
from scnet.train.folder import LOCK, own_folder

ARGS = ["train", "--data", "synthetic", "--batch-size", "32", "--lr", "0.05"]
QUIET = dict(show_progress=False, log=lambda *a: None)


def _train(out: Path, epochs: int = 1) -> None:
    fit(merge_config(flags=dict(model="scnet_demo", data="synthetic", batch_size=32, lr=0.05, epochs=epochs, out=str(out))), **QUIET)


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_resume_of_a_moved_copy_continues_in_the_copy(tmp_path: Path) -> None:
    first = tmp_path / "runA"
    _train(first)
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    shutil.rmtree(first)
    assert main([*ARGS, "--resume", str(moved), "--epochs", "2"]) == 0
    assert not first.exists()  # the folder recorded inside the checkpoint is not made again
    state = read_checkpoint(moved / "checkpoint-last.pth")
    assert state["epoch"] == 2 and state["config"]["out"] == str(moved)
    assert len((moved / "log.csv").read_text().splitlines()) == 3  # header and two epochs


def test_resume_with_out_continues_in_a_copy_and_leaves_the_source(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source, copy = tmp_path / "source", tmp_path / "copy"
    _train(source)
    before = _bytes(source)
    assert main([*ARGS, "--resume", str(source), "--epochs", "2", "--out", str(copy)]) == 0
    assert _bytes(source) == before  # untouched
    assert read_checkpoint(copy / "checkpoint-last.pth")["epoch"] == 2
    assert f"copied the run in {source} to {copy}" in capsys.readouterr().out
    # A copy goes only into a new or empty folder.
    assert main([*ARGS, "--resume", str(source), "--out", str(copy)]) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, key", [("--lr", "0.5", "lr"), ("--batch-size", "16", "batch_size"),
                                              ("--data", "fashion_mnist", "data"), ("--model", "scnet_demo_plain", "model")])
def test_options_that_contradict_the_resumed_run_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture, flag, value, key) -> None:
    run = tmp_path / "run"
    _train(run)
    before = _bytes(run)
    args = [a for a in ARGS if a not in ("--lr", "0.05")] if flag == "--lr" else ARGS
    args = [a for a in args if a not in ("--data", "synthetic")] if flag == "--data" else args
    args = [a for a in args if a not in ("--batch-size", "32")] if flag == "--batch-size" else args
    assert main([*args, "--resume", str(run), flag, value, "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{flag} " in err and f"({key} is " in err and "keeps its recipe" in err
    assert _bytes(run) == before


def test_giving_the_run_s_own_values_again_is_not_a_conflict(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train(run)
    assert main([*ARGS, "--model", "scnet_demo", "--resume", str(run), "--epochs", "2", "--checkpoint-every", "3"]) == 0
    assert read_checkpoint(run / "checkpoint-last.pth")["epoch"] == 2


@pytest.mark.parametrize("kind", ["release", "weights"])
def test_resuming_a_file_that_is_not_a_training_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, kind) -> None:
    run = tmp_path / "run"
    _train(run)
    if kind == "release":
        target = run / "weights-best.safetensors"
    else:
        target = tmp_path / "bare.pth"
        torch.save(read_checkpoint(run / "checkpoint-last.pth")["model"], target)
    assert main([*ARGS, "--resume", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a training checkpoint" in err and f"--checkpoint {target}" in err


def test_a_second_run_on_a_held_folder_is_refused_and_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "shared"
    with own_folder(out):  # this process holds it, as a live run would
        assert main([*ARGS, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by another run (process {os.getpid()} on {socket.gethostname()}" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK]
    assert not out.exists()  # made by the holder, left empty: removed when it let go


@pytest.mark.slow
def test_two_concurrent_runs_on_one_folder(tmp_path: Path) -> None:
    """A real second process: the first run trains on; the second is refused at once; the first's files are its own."""
    out = tmp_path / "shared"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1] / "src"),
                                                                    os.environ.get("PYTHONPATH")) if p)}
    first = subprocess.Popen([sys.executable, "-m", "scnet.cli", *ARGS, "--epochs", "4", "--checkpoint-every", "1",
                              "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / LOCK).exists() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-m", "scnet.cli", *ARGS, "--lr", "0.1", "--epochs", "1", "--out", str(out)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert first.wait(timeout=600) == 0, first.stderr.read()
    assert second.returncode == 2 and f"is in use by another run (process {first.pid}" in second.stderr
    state = read_checkpoint(out / "checkpoint-last.pth")
    assert state["epoch"] == 4 and state["config"]["lr"] == 0.05  # the first run's, whole
    assert "lr: 0.05" in (out / "config.yaml").read_text() and len((out / "log.csv").read_text().splitlines()) == 5
    assert not (out / LOCK).exists() and not list(out.glob(".*.tmp"))


def test_a_dead_run_s_lock_is_taken_over_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid is no longer a process (pids are not reused this quickly)
    (out / LOCK).write_text(json.dumps(dict(pid=gone.pid, host=socket.gethostname(), started=time.time() - 60)))
    assert main([*ARGS, "--epochs", "1", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"was locked by process {gone.pid} on {socket.gethostname()}" in said and "no longer running" in said
    assert not (out / LOCK).exists() and (out / "checkpoint-last.pth").is_file()


def test_a_lock_of_another_host_is_reported_with_the_way_out(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(json.dumps(dict(pid=1, host="elsewhere.example", started=time.time())))
    assert main([*ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "in use by another run (process 1 on elsewhere.example" in err and f"remove {out / LOCK}" in err


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "new"
    assert main([*ARGS, "--checkpoint", str(tmp_path / "missing.pth"), "--out", str(out)]) == 2
    assert not out.exists()


def test_an_interrupted_study_says_how_to_go_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Ctrl-C in a study: the advice is to run the study again (it refuses --resume), not a run's --resume."""
    import signal

    from scnet.train.signals import TrainingStopped

    compare_module = sys.modules["scnet.train.compare"]

    def stopped(cfg, show_progress=True):
        raise TrainingStopped(signal.SIGINT, f"stopped by SIGINT at epoch 1, step 2 of 8; checkpoint written: continue with {{resume}} {cfg.out}",
                              "resume")

    monkeypatch.setattr(compare_module, "fit", stopped)
    out = tmp_path / "study"
    code = main(["compare", "--models", "scnet_demo", "--data", "synthetic", "--epochs", "1", "--seeds", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 130 and "stopped by SIGINT at epoch 1, step 2 of 8" in err and "run the same scnet compare command again" in err
    assert "--resume" not in err and not (out / LOCK).exists()


def test_a_second_study_on_a_held_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "study"
    with own_folder(out):
        assert main(["compare", "--models", "scnet_demo", "--data", "synthetic", "--epochs", "1", "--seeds", "0", "--out", str(out)]) == 2
    assert "is in use by another run" in capsys.readouterr().err


@pytest.mark.parametrize("contents, problem", [
    ('{"pid": 99999999999999, "host": "%s", "started": 1}', "its pid 99999999999999 is no process id"),
    ('{"pid": 4294967296, "host": "%s", "started": 1}', "its pid 4294967296 is no process id"),
    ('{"pid": -1, "host": "%s", "started": 1}', "its pid -1 is no process id"),  # kill(-1, 0) would answer for every process
    ('{"pid": true, "host": "%s", "started": 1}', "its pid True is no process id"),
    ('{"pid": 1, "host": "%s", "started": 1e300}', "its start time 1e+300 is no time"),
    ('{"pid": 1, "host": "%s", "started": NaN}', "its start time nan is no time"),
    ('{"pid": 1, "host": 7, "started": 1}', "its host 7 is no host name"),
    ('[1, 2]', "it holds list, not an owner"),
    ('{"pid": 1, "pad": "%s", "host": "h", "started": 1}' % ("x" * 5000), "it is larger than a lock"),
])
def test_a_lock_that_this_tool_did_not_write_is_refused_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                   contents: str, problem: str) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(contents.replace("%s", socket.gethostname()))
    assert main([*ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"holds a lock file that this tool did not write ({out / LOCK}: {problem})" in err, err
    assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing else written, the file left for its owner
