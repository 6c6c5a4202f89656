"""Learning curves (``scnet compare --train-sizes``): nested stratified subsets, epochs of the whole set, the data
multiplier on curves whose answer is known, and the curve study's resume, refusals and report."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from scnet.cli import main
from scnet.data import TensorImages, build_datasets, nested_order, nested_subset
from scnet.train import EpochBatches, TrainConfig, fit
from scnet.train.curve_stats import curve_summary, data_multiplier, images_needed, multiplier_interval

PLAIN, SC = "scnet_demo_plain", "scnet_demo"
SYNTHETIC = ["--data", "synthetic", "--epochs", "1", "--batch-size", "32"]  # 256 training images


# ---- subsets -----------------------------------------------------------------------------------------------------
def test_every_prefix_of_the_order_is_stratified_and_seeded() -> None:
    labels = torch.tensor([0] * 600 + [1] * 300 + [2] * 90 + [3] * 10)  # sorted by class, as an ImageFolder's list
    order = nested_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(1000))  # a permutation: every image, once
    shares = torch.tensor([600, 300, 90, 10]) / 1000
    for n in range(1, 1001):
        counts = torch.bincount(labels[order[:n]], minlength=4)
        assert (counts - n * shares).abs().max() <= 1.0, (n, counts)  # each class its share, to within one image
    assert torch.equal(order, nested_order(labels, seed=3))
    assert not torch.equal(order[:50], nested_order(labels, seed=4)[:50])
    # Within a class the images are a random draw, not the class's first ones.
    first_zeros = order[:300][labels[order[:300]] == 0]
    assert first_zeros.max() > 300


def test_subsets_of_one_seed_are_nested_and_keep_the_data_in_memory() -> None:
    train, _, _ = build_datasets("synthetic")
    small, large = nested_subset(train, 40, seed=1), nested_subset(train, 200, seed=1)
    assert isinstance(small, TensorImages) and len(small) == 40 and len(large) == 200
    rows = {bytes(x.numpy()) for x in large.images}
    assert all(bytes(x.numpy()) in rows for x in small.images)  # every image of the small set is in the large one
    whole = nested_subset(train, len(train), seed=1)
    assert torch.equal(whole.images, train.images) and torch.equal(whole.labels, train.labels)  # the whole set, as it was
    with pytest.raises(ValueError, match="train_subset must be an integer from 1 to the 256 training images, got 257"):
        nested_subset(train, 257, seed=1)


def test_a_subset_of_a_folder_is_a_subset_of_its_targets() -> None:
    class Folder(torch.utils.data.Dataset):  # an ImageFolder's interface: targets sorted by class, images read lazily
        targets = [0] * 150 + [1] * 150

        def __len__(self) -> int:
            return 300

        def __getitem__(self, i: int):
            raise AssertionError("no image is read to draw a subset")

    subset = nested_subset(Folder(), 30, seed=0)
    assert isinstance(subset, torch.utils.data.Subset) and len(subset) == 30
    assert sum(Folder.targets[i] for i in subset.indices) == 15  # both classes, not the head's one


# ---- epochs of the whole set -------------------------------------------------------------------------------------
def test_epochs_of_another_length_read_one_stream_of_passes() -> None:
    batches = EpochBatches(10, 4, shuffle=True, drop_last=True, seed=2, epoch_length=25)
    seen = []
    for epoch in range(4):
        batches.set_epoch(epoch)
        assert len(batches) == 6 and len(batches.order()) == 25
        seen += batches.order()
    passes = [torch.randperm(10, generator=torch.Generator().manual_seed(2 * 7919 + p)).tolist() for p in range(10)]
    assert seen == [i for p in passes for i in p]  # pass after pass, each seeded by (seed, pass)
    assert set(torch.bincount(torch.tensor(seen)).tolist()) == {10}
    # The default length is the set's: epoch e is pass e, as before epochs could be longer.
    plain = EpochBatches(10, 4, shuffle=True, drop_last=True, seed=2)
    plain.set_epoch(3)
    assert plain.order() == passes[3]


@pytest.mark.slow
def test_a_subset_run_takes_the_steps_of_the_whole_set(tmp_path: Path) -> None:
    cfg = TrainConfig(data="synthetic", epochs=2, batch_size=32, train_subset=64, out=str(tmp_path / "run")).validate()
    fit(cfg, show_progress=False)
    state = torch.load(tmp_path / "run" / "checkpoint-last.pth", weights_only=False)
    assert state["scheduler"]["last_epoch"] == 2 * 256 // 32  # 2 epochs of 256 images, not of 64
    assert state["config"]["train_subset"] == 64


# ---- the data multiplier on known curves -------------------------------------------------------------------------
SIZES = [1000, 2000, 4000, 8000]


def test_a_curve_shifted_by_two_needs_twice_the_images() -> None:
    plain = [60.0, 70.0, 80.0, 90.0]  # 10 points per doubling
    sc = [70.0, 80.0, 90.0, 95.0]  # the plain twin's accuracy at twice the images, then beyond its largest size
    rows = data_multiplier(SIZES, plain, sc)
    assert [r["multiplier"] for r in rows[:3]] == pytest.approx([2.0, 2.0, 2.0])
    assert [r["bound"] for r in rows] == ["=", "=", "=", ">"] and rows[3]["multiplier"] == 1.0  # > 8000 / 8000


def test_the_multiplier_is_interpolated_in_log_size() -> None:
    # 65 % lies halfway from 60 % (1000) to 70 % (2000) in accuracy: sqrt(2) * 1000 images in log size.
    assert images_needed(SIZES, [60, 70, 80, 90], 65.0) == (pytest.approx(1000 * math.sqrt(2)), "at")
    assert images_needed(SIZES, [60, 70, 80, 90], 50.0) == (1000.0, "below")
    assert images_needed(SIZES, [60, 70, 65, 90], 68.0) == (pytest.approx(1000 * 2 ** 0.8), "at")  # the first crossing
    rows = data_multiplier(SIZES, [60, 70, 80, 90], [55, 65, 75, 85])  # SC worse: a multiplier below one
    assert rows[0] == dict(size=1000, sc=55, plain_needs=1000.0, multiplier=1.0, bound="<=")
    assert [r["multiplier"] for r in rows[1:]] == pytest.approx([2 ** 0.5 / 2] * 3)
    with pytest.raises(ValueError, match="sizes must ascend"):
        images_needed([2000, 1000], [60, 70], 65.0)


def test_the_interval_resamples_each_sizes_pairs() -> None:
    plain, sc = [60.0, 70.0, 80.0, 90.0], [70.0, 80.0, 90.0, 95.0]
    exact = multiplier_interval(SIZES, [[(p, s)] * 3 for p, s in zip(plain, sc)])  # no spread: the estimate itself
    assert [r["low"] for r in exact[:3]] == pytest.approx([2.0] * 3) and [r["high"] for r in exact[:3]] == pytest.approx([2.0] * 3)
    assert exact[3]["low_bound"] == exact[3]["high_bound"] == ">"
    # SC's seeds at 1000 images: 65 or 75 %, so a resampled mean lies between them and the multiplier between
    # sqrt(2) (65 %) and 2 * sqrt(2) (75 %); with three pairs, a resample of one seed three times has probability
    # 1/27 > 2.5 %, so the interval's ends are exactly those two.
    spread = multiplier_interval(SIZES, [[(60.0, 65.0), (60.0, 75.0), (60.0, 70.0)]] + [[(p, s)] for p, s in zip(plain[1:], sc[1:])])
    assert (spread[0]["low"], spread[0]["high"]) == pytest.approx((math.sqrt(2), 2 * math.sqrt(2)))
    assert spread == multiplier_interval(SIZES, [[(60.0, 65.0), (60.0, 75.0), (60.0, 70.0)]] + [[(p, s)] for p, s in zip(plain[1:], sc[1:])])


def test_curve_summary_states_each_size_and_the_largest_difference() -> None:
    points = [dict(size=n, pairs=[dict(seed=s, plain=p + s, sc=q + s) for s in (0, 1)])
              for n, p, q in zip(SIZES, [60, 70, 80, 90], [70, 80, 90, 91])]
    summary = curve_summary(points)
    first = summary["points"][0]
    assert first["plain"]["mean"] == 60.5 and first["sc"]["ci95"] == pytest.approx([70.5 - 12.706205 * 0.5, 70.5 + 12.706205 * 0.5])
    assert first["diff"]["mean"] == 10.0 and first["diff"]["half_width"] == 0.0
    assert first["multiplier"]["multiplier"] == pytest.approx(2.0) and summary["largest_difference_at"] == 1000
    assert summary["pairs"] == 8


# ---- the curve study ---------------------------------------------------------------------------------------------
def _planned_curve(monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> list[tuple[int, str, int]]:
    """Training replaced by planned accuracies: the plain twin 10 points per doubling of its images, SC the plain
    twin's accuracy at twice its images (a multiplier of exactly 2), plus the seed / 10 for both."""
    calls: list[tuple[int, str, int]] = []

    def fake_fit(cfg, show_progress: bool = True) -> dict:
        calls.append((cfg.train_subset, cfg.model, cfg.seed))
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        images = cfg.train_subset * (2 if cfg.model == SC else 1)
        acc = 10 * math.log2(images) + cfg.seed / 10
        run = Path(cfg.out)
        run.mkdir(parents=True, exist_ok=True)
        (run / "log.csv").write_text(f"epoch,val_acc\n1,{acc}\n")
        return dict(final_val_acc=acc, best_val_acc=acc, train_seconds=1.0)

    monkeypatch.setattr(sys.modules["scnet.train.compare"], "fit", fake_fit)
    return calls


def _curve(out: Path, *args: str) -> int:
    return main(["compare", "--models", SC, *SYNTHETIC, "--out", str(out), *args])


def test_a_curve_runs_seed_by_seed_and_finds_the_planned_multiplier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    calls = _planned_curve(monkeypatch)
    assert _curve(tmp_path / "c", "--train-sizes", "128", "32", "64", "--seeds", "0", "1") == 0
    assert calls == [(n, m, s) for s in (0, 1) for n in (32, 64, 128) for m in (PLAIN, SC)]  # whole seeds first
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    points = report["curve"]["points"]
    assert [p["size"] for p in points] == [32, 64, 128] and [p["seeds"] for p in points] == [[0, 1]] * 3
    assert [p["multiplier"]["multiplier"] for p in points[:2]] == pytest.approx([2.0, 2.0])
    # Each size's pairs are resampled on their own, so the seeds' 0.1-point offset moves the interval a little.
    assert points[0]["multiplier"]["low"] == pytest.approx(2.0, abs=0.02) and points[2]["multiplier"]["bound"] == ">"
    assert points[0]["diff"]["mean"] == pytest.approx(10.0)
    assert report["steps_per_run"] == 8 and report["images_per_run"] == 256 and report["status"] == "done"
    md = (tmp_path / "c" / "report.md").read_text()
    assert "| 32 | 2 |" in md and "| 2.00x [1.99x, 2.01x] |" in md and "![accuracy against training-set size" in md
    assert (tmp_path / "c" / "report.png").stat().st_size > 10_000
    assert "2.00x" in capsys.readouterr().out


def test_an_interrupted_curve_continues_and_more_seeds_join_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "c"
    _planned_curve(monkeypatch, fail_at=4)  # stopped during seed 0 at 64 images
    assert _curve(out, "--train-sizes", "32", "64", "--seeds", "0", "1") == 130  # as Ctrl-C ends a command
    so_far = json.loads((out / "report.json").read_text())  # written after every pair: what finished is reported
    assert so_far["status"] == "running" and [(p["size"], p["seeds"]) for p in so_far["curve"]["points"]] == [(32, [0])]
    calls = _planned_curve(monkeypatch)
    assert _curve(out, "--train-sizes", "32", "64", "--seeds", "0", "1") == 0
    assert calls == [(64, SC, 0), (32, PLAIN, 1), (32, SC, 1), (64, PLAIN, 1), (64, SC, 1)]  # nothing trained twice
    calls = _planned_curve(monkeypatch)
    assert _curve(out, "--train-sizes", "64", "--seeds", "0", "1", "2") == 0  # a third pair where it is needed
    assert calls == [(64, PLAIN, 2), (64, SC, 2)]
    points = json.loads((out / "report.json").read_text())["curve"]["points"]
    assert [(p["size"], p["seeds"]) for p in points] == [(32, [0, 1]), (64, [0, 1, 2])]  # every size the folder holds


@pytest.mark.parametrize("args, message", [
    (["--train-sizes", "32", "512"], "--train-sizes 512 is more than the 256 training images of synthetic"),
    (["--train-sizes", "16", "64"], "--train-sizes 16 is less than one batch of 32"),
    (["--train-sizes", "32", "32"], "--train-sizes must be distinct positive integers"),
    (["--train-sizes", "32", "--erf-samples", "8"], "a learning curve has a study per size"),
    (["--train-sizes", "32", "--train-subset", "64"], "give --train-sizes or --train-subset, not both"),
    (["--train-sizes", "32", "--lr", "0.5"], "lr is 0.025 there, 0.5 here"),
])
def test_a_curve_refuses_before_it_changes_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                                    args: list[str], message: str) -> None:
    out = tmp_path / "c"
    _planned_curve(monkeypatch)
    assert _curve(out, "--train-sizes", "32", "--seeds", "0") == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    calls = _planned_curve(monkeypatch)
    assert _curve(out, "--seeds", "0", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("scnet compare: error: ") and message in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before and not calls


def test_a_curve_and_a_study_of_one_size_keep_to_their_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    _planned_curve(monkeypatch)
    assert _curve(tmp_path / "one", "--seeds", "0", "--train-subset", "64") == 0  # a study of one size
    assert _curve(tmp_path / "one", "--seeds", "0", "--train-sizes", "32") == 2
    assert "holds a study of one training-set size, not a learning curve" in capsys.readouterr().err
    assert _curve(tmp_path / "curve", "--seeds", "0", "--train-sizes", "32") == 0
    assert _curve(tmp_path / "curve", "--seeds", "0") == 2
    assert "holds a learning curve, not a study of one size" in capsys.readouterr().err


def test_a_damaged_size_report_is_refused_and_rewritten_from_the_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "c"
    _planned_curve(monkeypatch)
    assert _curve(out, "--train-sizes", "32", "64", "--seeds", "0") == 0
    size_report = out / "n64" / "report.json"
    good = json.loads(size_report.read_text())
    size_report.write_text(json.dumps({**good, "pairs": [{**good["pairs"][0], "sc": 250.0}]}))
    capsys.readouterr()
    assert _curve(out, "--train-sizes", "32", "64", "--seeds", "0") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{size_report} is not a report this tool wrote (its pair" in err, err
    size_report.unlink()  # as the message says: the runs' records rewrite it, nothing is trained again
    calls = _planned_curve(monkeypatch)
    assert _curve(out, "--train-sizes", "32", "64", "--seeds", "0") == 0
    assert not calls and json.loads(size_report.read_text())["pairs"] == good["pairs"]
