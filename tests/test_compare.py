"""``scnet compare``: the paired t-interval, the --until-resolved rule, refusals that change nothing, resume, report."""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from scnet.cli import main
from scnet.train import TrainConfig
from scnet.train.study_stats import next_seed, paired_interval, study_finished, verdict

SYNTHETIC = ["--data", "synthetic", "--epochs", "1", "--batch-size", "32"]
PLAIN, SC = "scnet_demo_plain", "scnet_demo"


def _compare(out: Path, *args: str) -> int:
    return main(["compare", "--models", SC, *SYNTHETIC, "--out", str(out), *args])


def _planned(monkeypatch: pytest.MonkeyPatch, diff: Callable[[int], float], fail_at: int | None = None) -> list[tuple[str, int]]:
    """Replace training by planned accuracies: plain 80 + seed / 10, SC that plus ``diff(seed)``; returns the calls.
    ``fail_at``: the call (counted from 1) that is interrupted as by Ctrl-C."""
    calls: list[tuple[str, int]] = []

    def fake_fit(cfg, show_progress: bool = True) -> dict:
        calls.append((cfg.model, cfg.seed))
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        acc = 80.0 + cfg.seed / 10 + (diff(cfg.seed) if cfg.model == SC else 0.0)
        run = Path(cfg.out)
        run.mkdir(parents=True, exist_ok=True)
        (run / "log.csv").write_text(f"epoch,val_acc\n1,{acc}\n")
        (run / "checkpoint-last.pth").touch()  # the final weights' place: the figures (CAMs, ERF) picture the first pair holding them
        return dict(final_val_acc=acc, best_val_acc=acc, train_seconds=1.0)

    monkeypatch.setattr(sys.modules["scnet.train.compare"], "fit", fake_fit)
    return calls


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# ---- the statistics ---------------------------------------------------------------------------------------------
def test_paired_interval_against_a_hand_computed_example() -> None:
    # diffs 0.3, 0.1, 0.5, 0.2: mean 0.275; squared deviations 0.000625 + 0.030625 + 0.050625 + 0.005625 = 0.0875,
    # sd = sqrt(0.0875 / 3) = 0.170783, sem = sd / 2 = 0.085391; t(0.975, 3 dof) = 3.182446;
    # half-width 3.182446 * 0.085391 = 0.271753, interval [0.003247, 0.546753]: just excludes zero.
    iv = paired_interval([0.3, 0.1, 0.5, 0.2])
    assert iv["n"] == 4 and iv["mean_diff"] == pytest.approx(0.275)
    assert iv["sd"] == pytest.approx(0.170783, abs=1e-6) and iv["sem"] == pytest.approx(0.085391, abs=1e-6)
    assert iv["t"] == pytest.approx(3.182446, abs=1e-6) and iv["half_width"] == pytest.approx(0.271753, abs=1e-6)
    assert iv["ci95"] == pytest.approx([0.003247, 0.546753], abs=1e-6)
    assert verdict(iv) == "SC ahead: the 95 % interval excludes zero"
    # Two pairs: t(0.975, 1 dof) = 12.706205, sd of (1, 3) = sqrt(2), sem = 1: the interval is 2 +- 12.706205.
    assert paired_interval([1.0, 3.0])["ci95"] == pytest.approx([2 - 12.706205, 2 + 12.706205], abs=1e-6)


def test_one_pair_has_no_interval_and_none_has_no_mean() -> None:
    iv = paired_interval([0.4])
    assert iv["mean_diff"] == 0.4 and all(iv[k] is None for k in ("sd", "sem", "t", "half_width", "ci95"))
    assert verdict(iv).startswith("one seed gives no interval")
    with pytest.raises(ValueError, match="at least one difference"):
        paired_interval([])


def test_verdict_words() -> None:
    assert verdict(paired_interval([-0.3, -0.1, -0.5, -0.2])) == "SC behind: the 95 % interval excludes zero"
    wide = paired_interval([0.1, -0.1, 0.1])  # mean 0.033, half-width 4.302653 * 0.066667 = 0.286844
    assert verdict(wide) == "not resolved: the 95 % interval includes zero"
    assert verdict(wide, until_resolved=0.5) == ("resolved to ±0.29 points: the 95 % interval includes zero, so the two "
                                                 "models are within 0.32 points of each other")
    assert verdict(wide, until_resolved=0.2) == "not resolved: the 95 % interval includes zero"


def test_stopping_rule() -> None:
    assert not study_finished([0.3], 10.0)  # one pair: no interval, however loose the target
    assert not study_finished([0.3, 0.1, 0.5], 0.01) and study_finished([0.3, 0.1, 0.5, 0.2], 0.01)  # excludes zero at 4
    assert not study_finished([0.1, -0.1], 0.5) and study_finished([0.1, -0.1, 0.1], 0.5)  # half-width 1.27, then 0.29
    assert next_seed([4, 2], [4], [0.1], None, None) == 2  # the given seeds first, in their order
    assert next_seed([4, 2], [4, 2], [0.1, 0.2], None, None) is None  # no rule: the given seeds only
    assert next_seed([4, 2], [4, 2], [0.1, -0.1], 0.5, 10) == 5  # one past the largest seed so far
    assert next_seed([0, 1], [0, 1, 2], [0.1, -0.1, 0.1], 0.5, 10) is None  # resolved
    assert next_seed([0, 1], [0, 1, 2], [0.1, -0.1, 0.1], 0.01, 3) is None  # the pair limit


# ---- --until-resolved on planned accuracies ---------------------------------------------------------------------
def test_until_resolved_stops_at_the_pair_that_excludes_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    diffs = [0.3, 0.1, 0.5, 0.2, 0.4, 0.4]  # the interval first excludes zero with the fourth pair (test above)
    calls = _planned(monkeypatch, lambda seed: diffs[seed])
    assert _compare(tmp_path / "s", "--seeds", "0", "1", "--until-resolved", "0.01", "--max-seeds", "6") == 0
    assert calls == [(m, s) for s in range(4) for m in (PLAIN, SC)]
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert [p["seed"] for p in report["pairs"]] == [0, 1, 2, 3] and report["status"] == "done"
    assert [p["diff"] for p in report["pairs"]] == pytest.approx(diffs[:4])
    assert report["ci95"] == pytest.approx([0.003247, 0.546753], abs=1e-6) and report["half_width"] == pytest.approx(0.271753, abs=1e-6)
    assert report["verdict"].startswith("SC ahead") and report["until_resolved"] == 0.01 and report["max_seeds"] == 6
    assert report["threads_per_process"] == [torch.get_num_threads()] and "torch threads" in report["machine"]
    md = (tmp_path / "s" / "report.md").read_text()
    assert "Student t-interval over the 4 paired differences, t(0.975, 3) = 3.182" in md
    assert "stopped after 4 pairs" in md and "--max-seeds limit" not in md


def test_until_resolved_stops_at_the_half_width(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _planned(monkeypatch, lambda seed: 0.1 if seed % 2 == 0 else -0.1)
    assert _compare(tmp_path / "s", "--seeds", "0", "--until-resolved", "0.5") == 0
    assert len(calls) == 6  # half-width 1.27 after two pairs, 0.29 after three
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["verdict"].startswith("resolved to ±0.29 points") and report["max_seeds"] == 10  # the default limit


def test_until_resolved_runs_to_max_seeds_when_it_never_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _planned(monkeypatch, lambda seed: 0.1 if seed % 2 == 0 else -0.1)
    assert _compare(tmp_path / "s", "--seeds", "2", "7", "--until-resolved", "0.01", "--max-seeds", "5") == 0
    assert [s for m, s in calls if m == SC] == [2, 7, 8, 9, 10]
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["verdict"] == "not resolved: the 95 % interval includes zero" and report["status"] == "done"
    assert "stopped after 5 pairs (the --max-seeds limit)" in (tmp_path / "s" / "report.md").read_text()


# ---- refusals: one line, nothing changed ------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--until-resolved", "0"], "--until-resolved must be a positive half-width in accuracy points, got 0.0"),
    (["--until-resolved", "-1"], "got -1.0"),
    (["--until-resolved", "nan"], "got nan"),
    (["--until-resolved", "0.5", "--max-seeds", "0"], "--max-seeds must be an integer >= 2 (an interval needs two pairs), got 0"),
    (["--until-resolved", "0.5", "--max-seeds", "1", "--seeds", "0", "1"], "got 1"),
    (["--until-resolved", "0.5", "--max-seeds", "2", "--seeds", "0", "1", "2"], "--max-seeds 2 is fewer than the 3 --seeds given"),
    (["--max-seeds", "4"], "--max-seeds 4 needs --until-resolved"),
    (["--seeds", "0", "1", "0"], "--seeds repeats 0"),
    (["--erf-samples", "-1"], "--erf-samples must be an integer >= 0, got -1"),
    (["--model", "scnet50"], "--model does not apply to a study; use --models"),
    (["--epochs", "2"], "study.json holds another study: epochs is 1 there, 2 here"),
    (["--models", "scnet50"], "models is ['scnet_demo_plain', 'scnet_demo'] there, ['scnet50_plain', 'scnet50'] here"),
    (["--models", "scnet_demo", "scnet50"], "a study pairs one SC model with its plain twin"),
])
def test_bad_input_is_one_line_and_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                                   args: list[str], message: str) -> None:
    out = tmp_path / "s"
    _planned(monkeypatch, lambda seed: 0.2)
    assert _compare(out, "--seeds", "0") == 0
    before = _files(out)
    capsys.readouterr()
    calls = _planned(monkeypatch, lambda seed: 0.2)
    assert _compare(out, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("scnet compare: error: ") and err.count("\n") == 1 and message in err, err
    assert _files(out) == before and not calls


def test_a_finished_run_of_another_recipe_is_not_trained_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "s"
    _planned(monkeypatch, lambda seed: 0.2)
    assert _compare(out, "--seeds", "0", "--lr", "0.05") == 0
    (out / "study.json").unlink()  # as a directory made before study.json existed
    before = _files(out)
    capsys.readouterr()
    assert _compare(out, "--seeds", "0", "1", "--lr", "0.1") == 2
    err = capsys.readouterr().err
    assert "scnet_demo-seed0 holds a run with another recipe: lr is 0.05 there, 0.1 here" in err and err.count("\n") == 1
    assert _files(out) == before
    # An unfinished run (a checkpoint, no record yet) of another recipe is refused before anything trains, too.
    config = json.loads((out / "scnet_demo-seed0" / "compare-run.json").read_text())["config"]
    (out / "scnet_demo-seed1").mkdir()
    other = TrainConfig().warmup_epochs + 1.0
    torch.save(dict(config={**config, "seed": 1, "warmup_epochs": other}), out / "scnet_demo-seed1" / "checkpoint-last.pth")
    before = _files(out)
    calls = _planned(monkeypatch, lambda seed: 0.2)
    assert _compare(out, "--seeds", "0", "1", "--lr", "0.05") == 2
    err = capsys.readouterr().err
    assert f"scnet_demo-seed1 holds a run with another recipe: warmup_epochs is {other!r} there, {other - 1.0!r} here" in err
    assert _files(out) == before and not calls


# ---- resume ------------------------------------------------------------------------------------------------------
def test_an_interrupted_study_resumes_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "s"
    calls = _planned(monkeypatch, lambda seed: 0.1 * seed, fail_at=3)  # Ctrl-C while training the second pair
    assert _compare(out, "--seeds", "0", "1", "2") == 130
    report = json.loads((out / "report.json").read_text())
    assert [p["seed"] for p in report["pairs"]] == [0] and report["status"] == "running"  # the first pair was reported
    calls = _planned(monkeypatch, lambda seed: 0.1 * seed)
    assert _compare(out, "--seeds", "0", "1", "2") == 0
    assert calls == [(PLAIN, 1), (SC, 1), (PLAIN, 2), (SC, 2)]  # seed 0's pair reused
    report = json.loads((out / "report.json").read_text())
    assert [p["diff"] for p in report["pairs"]] == pytest.approx([0.0, 0.1, 0.2])
    # A longer study in the same directory adds only its new seeds.
    calls = _planned(monkeypatch, lambda seed: 0.1 * seed)
    assert _compare(out, "--seeds", "0", "1", "2", "3") == 0
    assert calls == [(PLAIN, 3), (SC, 3)]


def test_one_seed_shows_no_spread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    _planned(monkeypatch, lambda seed: 0.7)
    assert _compare(tmp_path / "s", "--seeds", "0") == 0
    stdout = capsys.readouterr().out
    md = (tmp_path / "s" / "report.md").read_text()
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert "±" not in stdout and "±" not in md
    assert "SC - plain: +0.70 points from one seed. Verdict: one seed gives no interval" in md and "one seed gives no interval" in stdout
    assert report["ci95"] is None and report["half_width"] is None and report["models"][SC]["std"] is None


# ---- the real thing, small ---------------------------------------------------------------------------------------
def test_compare_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--models", "scnet_demo", "--seeds", "0", "1", "--data", "synthetic", "--epochs", "1",
            "--batch-size", "32", "--lr", "0.05", "--out", str(out)]
    assert main([*args, "--erf-samples", "4"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["scnet_demo_plain", "scnet_demo"] and report["seeds"] == [0, 1]
    for name, entry in report["models"].items():
        accs = [r["final_val_acc"] for r in entry["runs"]]
        assert entry["mean"] == pytest.approx(statistics.fmean(accs)) and entry["std"] == pytest.approx(statistics.stdev(accs))
        assert (out / f"{name}-seed1" / "checkpoint-last.pth").is_file()
    md = (out / "report.md").read_text()
    params = report["models"]["scnet_demo"]["params"]
    assert f"| scnet_demo | {params:,} |" in md and params == 1_134_460  # 1-channel input, 4 classes (the synthetic set)
    assert "scnet_demo vs scnet_demo_plain" in md and (out / "report.png").stat().st_size > 10_000
    for pair, (a, b) in zip(report["pairs"], zip(*(report["models"][n]["runs"] for n in report["models"]))):
        assert pair["diff"] == pytest.approx(b["final_val_acc"] - a["final_val_acc"])
        assert f"| {a['seed']} | {a['final_val_acc']:.2f} | {b['final_val_acc']:.2f} | {pair['diff']:+.2f} |" in md
    half = 12.706205 * abs(report["pairs"][0]["diff"] - report["pairs"][1]["diff"]) / 2  # t(0.975, 1) * sd / sqrt(2)
    assert report["half_width"] == pytest.approx(half, abs=1e-4) and "t-interval over the 2 paired differences" in md
    assert json.loads((out / "study.json").read_text())["models"] == ["scnet_demo_plain", "scnet_demo"]
    # The ERF of the first seed's trained pair, by scnet erf's code, beside the accuracy.
    stages = report["erf"]["stages"]
    assert list(stages) == ["layer1", "layer2", "layer3", "layer4"] and (out / "erf" / "erf.png").stat().st_size > 10_000
    for stage, by_model in stages.items():
        assert list(by_model) == ["scnet_demo", "scnet_demo_plain"] and "(erf/erf.png)" in md
        assert all(0 < r["50%"] <= r["99%"] <= 1 for r in by_model.values())
        sc, plain = by_model["scnet_demo"], by_model["scnet_demo_plain"]
        assert (f"| {stage} | {100 * sc['50%']:.1f}% | {100 * plain['50%']:.1f}% | {100 * sc['99%']:.1f}% | "
                f"{100 * plain['99%']:.1f}% |") in md
    assert not math.isnan(report["mean_diff"])

    # An interrupted comparison picks up its finished runs instead of training them again.
    monkeypatch.setattr(sys.modules["scnet.train.compare"], "fit", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert main(args) == 0
    assert json.loads((out / "report.json").read_text())["models"] == report["models"]


def test_runs_saved_before_newer_options_are_still_this_recipe(tmp_path: Path) -> None:
    """A run saved by an earlier version lacks the options added since; at their defaults they change nothing."""
    from scnet.train.compare import _refuse_other, _recipe

    here = _recipe(TrainConfig(data="synthetic").validate().to_dict())
    old = {k: v for k, v in here.items() if k not in ("nesterov", "decay_all", "lr_milestones", "lr_gamma", "frozen_stages")}
    _refuse_other(tmp_path, "a run with another recipe", old, here)  # accepted
    _refuse_other(tmp_path, "a run with another recipe", {**old, "workers": 0}, here)  # a run key recorded then: accepted
    with pytest.raises(ValueError, match="nesterov is False there, True here"):
        _refuse_other(tmp_path, "a run with another recipe", {**old, "nesterov": False}, here)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc: field 4 of each stat line)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the test finds the workers in /proc")
def test_a_killed_study_leaves_no_run_training_and_continues_both(tmp_path: Path) -> None:
    # The study (2 runs at once) is SIGKILLed mid-training: both workers checkpoint at their next step and exit,
    # instead of training on unowned; the same command then continues both runs to the end.
    import os
    import signal
    import subprocess
    import time

    from scnet.data import FASHION_MNIST_SYSTEM_DIR
    from scnet.files import read_checkpoint

    if not Path(FASHION_MNIST_SYSTEM_DIR).is_dir():
        pytest.skip("Fashion-MNIST is not installed (make data)")
    out = tmp_path / "study"
    runs = [out / f"{m}-seed0" / "checkpoint-last.pth" for m in (PLAIN, SC)]
    args = [sys.executable, "-m", "scnet", "compare", "--models", SC, "--seeds", "0", "--jobs", "2", "--data", "fashion_mnist",
            "--limit-train", "2048", "--limit-val", "512", "--epochs", "2", "--batch-size", "64", "--checkpoint-every", "4",
            "--out", str(out)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    study = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while not all(p.is_file() for p in runs) and time.monotonic() < deadline:
        time.sleep(0.1)  # both are training: each has written a checkpoint after 4 steps
    position = lambda p: (lambda s: (s["epoch"], s["step"]))(read_checkpoint(p))  # noqa: E731
    before = [position(p) for p in runs]
    workers = [p for p in _children(study.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(workers) == 2 and study.poll() is None
    study.send_signal(signal.SIGKILL)
    study.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{p}").exists() for p in workers), "a worker went on training without its study"
    after = [position(p) for p in runs]
    assert all(a > b for a, b in zip(after, before)), (before, after)  # a checkpoint at the step each was in
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("continuing the unfinished run") == 2


def test_localization_is_compared_like_accuracy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the test set has object boxes, each run's pointing game and energy share are paired by seed, with an
    interval and a verdict each, beside the accuracy."""
    _planned(monkeypatch, lambda seed: 0.5)
    module = sys.modules["scnet.train.compare"]
    planned = lambda model, seed: dict(pointing=50.0 + seed + (3.0 + 0.3 * (seed % 2) if model == SC else 0.0),  # noqa: E731
                                       energy_in_box=40.0 - seed - (1.0 if model == SC else 0.0))
    monkeypatch.setattr(module, "_localization", lambda cfg, run: planned(cfg.model, cfg.seed))
    monkeypatch.setattr(module, "_cam_page", lambda base, names, seed, out: dict(seed=seed, png="cams.png", images=8))
    out = tmp_path / "loc"
    assert _compare(out, "--seeds", "0", "1", "2") == 0
    report = json.loads((out / "report.json").read_text())
    pointing, energy = report["metrics"]["pointing"], report["metrics"]["energy_in_box"]
    assert [p["diff"] for p in pointing["pairs"]] == pytest.approx([3.0, 3.3, 3.0])
    assert pointing["mean_diff"] == pytest.approx(3.1) and pointing["ci95"] == pytest.approx(paired_interval([3.0, 3.3, 3.0])["ci95"])
    assert pointing["verdict"] == "SC ahead: the 95 % interval excludes zero"
    assert [p["plain"] for p in energy["pairs"]] == [40.0, 39.0, 38.0] and energy["mean_diff"] == pytest.approx(-1.0)
    assert energy["ci95"] is not None and energy["verdict"] == "SC behind: the 95 % interval excludes zero"
    assert report["metrics"]["final_val_acc"]["mean_diff"] == pytest.approx(report["mean_diff"]) == pytest.approx(0.5)
    md = (out / "report.md").read_text()
    assert "## Localization" in md and "| 1 | 51.00 | 54.30 | +3.30 | 39.00 | 38.00 | -1.00 |" in md and "| seed | pointing: " in md
    assert "(cams.png)" in md and (out / "localization.png").stat().st_size > 10_000 and report["cams"]["seed"] == 0

    # Continued elsewhere from the run records alone (no weights for seeds 0 and 1): the CAMs show the first pair
    # that has its weights here, and nothing is trained again.
    for run in out.glob("*-seed[01]"):
        (run / "checkpoint-last.pth").unlink()
    assert _compare(out, "--seeds", "0", "1", "2") == 0
    assert json.loads((out / "report.json").read_text())["cams"]["seed"] == 2


@pytest.mark.slow
def test_a_cluttered_study_measures_localization_on_every_test_image(tmp_path: Path) -> None:
    from scnet.load import load_model
    from scnet.viz import localization

    out = tmp_path / "clutter"
    assert main(["compare", "--models", SC, "--data", "cluttered_fashion_mnist", "--limit-train", "256", "--limit-val", "40",
                 "--epochs", "1", "--batch-size", "64", "--seeds", "0", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    run = report["models"][SC]["runs"][0]
    from scnet.data import build_datasets

    _, val, _ = build_datasets("cluttered_fashion_mnist", limit_train=1, limit_val=40)
    again = localization(load_model(file=str(out / f"{SC}-seed0" / "checkpoint-last.pth")).model, val)
    assert run["pointing"] == pytest.approx(again["pointing"]) and run["energy_in_box"] == pytest.approx(again["energy_in_box"])
    assert 0 <= run["pointing"] <= 100 and 0 < run["energy_in_box"] < 100
    assert report["cams"]["png"] == "cams.png" and (out / "cams.png").stat().st_size > 20_000


@pytest.mark.parametrize("damage, problem", [
    (lambda r: r.pop("result"), "no config and result"),
    (lambda r: r["result"].update(final_val_acc="abc"), "its final_val_acc abc is not a percentage"),
    (lambda r: r["result"].update(final_val_acc=float("nan")), "its final_val_acc nan is not a percentage"),
    (lambda r: r["result"].update(final_val_acc=250.0), "its final_val_acc 250.0 is not a percentage"),
    (lambda r: r["result"].update(seed=3), "its result's seed 3 is not its config's 0"),
    (lambda r: r["result"].update(train_seconds=-1), "its train_seconds -1 is not a duration"),
    (lambda r: r["result"].update(curve=[50.0, None]), "its curve is not a list of percentages"),
])
def test_a_damaged_run_record_is_refused_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                                   damage: Callable[[dict], object], problem: str) -> None:
    """A study reads its finished runs back from their records: each value is checked, so a damaged record is
    refused in one line, never averaged into a report (250 % once made "138.67 %")."""
    out = tmp_path / "s"
    _planned(monkeypatch, lambda seed: 0.2)
    assert _compare(out, "--seeds", "0") == 0
    record_path = out / f"{SC}-seed0" / "compare-run.json"
    record = json.loads(record_path.read_text())
    damage(record)
    record_path.write_text(json.dumps(record))
    report = (out / "report.md").read_text()
    capsys.readouterr()
    calls = _planned(monkeypatch, lambda seed: 0.2)
    assert _compare(out, "--seeds", "0") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{record_path} is not a run record this tool wrote ({problem})" in err, err
    assert not calls and (out / "report.md").read_text() == report


def test_a_record_that_is_not_a_regular_file_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FIFO where a record belongs (reading it would wait for a writer forever) is no record: the run is redone."""
    out = tmp_path / "s"
    _planned(monkeypatch, lambda seed: 0.2)
    assert _compare(out, "--seeds", "0") == 0
    record_path = out / f"{SC}-seed0" / "compare-run.json"
    record_path.unlink()
    os.mkfifo(record_path)
    (out / f"{SC}-seed0" / "checkpoint-last.pth").unlink()
    calls = _planned(monkeypatch, lambda seed: 0.2)
    assert _compare(out, "--seeds", "0") == 0
    assert calls == [(SC, 0)] and record_path.is_file()
    study = out / "study.json"
    study.unlink()
    os.mkfifo(study)
    assert _compare(out, "--seeds", "0") == 0  # not read: the study's identity is checked on its runs' records


def test_a_study_run_again_with_fewer_seeds_says_what_it_leaves_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "s"
    _planned(monkeypatch, lambda seed: 0.2)
    assert _compare(out, "--seeds", "0", "1", "2") == 0
    calls = _planned(monkeypatch, lambda seed: 0.2)
    assert _compare(out, "--seeds", "0") == 0
    report = json.loads((out / "report.json").read_text())
    assert not calls and report["seeds"] == [0] and report["other_seeds"] == [1, 2]
    assert "also holds the finished pairs of seed(s) 1, 2, which this report leaves out" in (out / "report.md").read_text()


@pytest.mark.slow
def test_sigterm_to_a_study_stops_both_runs_with_the_usual_line(tmp_path: Path) -> None:
    import signal
    import subprocess
    import time

    from scnet.data import FASHION_MNIST_SYSTEM_DIR

    if not Path(FASHION_MNIST_SYSTEM_DIR).is_dir():
        pytest.skip("Fashion-MNIST is not installed (make data)")
    out = tmp_path / "study"
    runs = [out / f"{m}-seed0" / "checkpoint-last.pth" for m in (PLAIN, SC)]
    args = [sys.executable, "-m", "scnet", "compare", "--models", SC, "--seeds", "0", "--jobs", "2", "--data", "fashion_mnist",
            "--limit-train", "2048", "--limit-val", "512", "--epochs", "2", "--batch-size", "64", "--checkpoint-every", "4",
            "--out", str(out)]
    study = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    deadline = time.monotonic() + 120
    while not all(p.is_file() for p in runs) and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = [p for p in _children(study.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(workers) == 2
    study.send_signal(signal.SIGTERM)
    _, err = study.communicate(timeout=120)
    assert study.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "run the same scnet compare command again" in err, err
    assert "resource_tracker" not in err and "Traceback" not in err
    assert not any(Path(f"/proc/{p}").exists() for p in workers)
