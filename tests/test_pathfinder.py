"""The Pathfinder generator: deterministic, balanced, markers at the curves' ends, equal lengths, no overlaps, no
shortcut a linear model on pixels or image statistics could take; the cache; the dataset and CLI entry points."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import scnet.data.pathfinder_gen as gen
from scnet.data import DataError, build_datasets, pathfinder

LEVELS = [(32, 6), (32, 14), (64, 9)]


@pytest.fixture(scope="module")
def scenes() -> dict[tuple[int, int], tuple[gen.Scenes, np.ndarray]]:
    """The first 300 images of each level, geometry and pixels (one chunk each is made)."""
    return {level: gen.pathfinder_scenes(300, *level, seed=0) for level in LEVELS}


def test_images_and_labels_are_deterministic_and_seeded(tmp_path: Path) -> None:
    images, labels = pathfinder(300, 32, 6, seed=3, cache=False)
    assert images.shape == (300, 1, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (300,) and labels.dtype == torch.int64 and set(labels.tolist()) == {0, 1}
    again = pathfinder(120, 32, 6, seed=3, cache=False)  # fewer images: the same first ones
    assert torch.equal(again[0], images[:120]) and torch.equal(again[1], labels[:120])
    other = pathfinder(300, 32, 6, seed=4, cache=False)
    assert (other[0] != images).flatten(1).any(1).all()  # another seed: every image differs


@pytest.mark.parametrize("level", LEVELS)
def test_labels_are_balanced(scenes, level) -> None:
    labels = scenes[level][0].labels
    assert abs(labels.mean() - 0.5) < 0.1  # 300 fair coin flips: sd 0.029


@pytest.mark.parametrize("level", LEVELS)
def test_markers_sit_at_the_two_ends_of_one_curve_or_of_two(scenes, level) -> None:
    s, images = scenes[level]
    last = s.spec.contour_length - 1
    starts = s.dashes[:, :2, 0, 0:2]  # (N, 2 targets, 2): the free end of each target's first dash
    ends = s.dashes[:, :2, last, 2:4]  # (N, 2, 2): the far end of each target's last dash
    origin = np.linalg.norm(starts - s.markers[:, None, 0], axis=-1).argmin(axis=1)  # which target the first marker starts
    terminal = np.linalg.norm(ends - s.markers[:, None, 1], axis=-1).argmin(axis=1)
    rows = np.arange(len(images))
    assert np.allclose(starts[rows, origin], s.markers[:, 0]) and np.allclose(ends[rows, terminal], s.markers[:, 1])
    assert np.array_equal(origin == terminal, s.labels == 1)  # joined exactly when both markers are on one curve
    # Drawn: the pixel under each marker's centre is white, give or take the Lanczos ringing (markers are white discs).
    cells = np.floor(s.markers).astype(int)  # (N, 2, 2)
    assert (images[rows[:, None], cells[..., 0], cells[..., 1]] >= 240).all()


@pytest.mark.parametrize("level", LEVELS)
def test_both_targets_are_whole_curves_of_the_same_length(scenes, level) -> None:
    s, _ = scenes[level]
    spec = s.spec
    assert (s.length[:, :2] == spec.contour_length).all()  # equal length: length tells nothing
    assert (s.length[:, 2:] <= spec.distractor_length).all() and (s.length[:, 2:] % spec.distractor_length == 0).all()
    drawn = np.arange(spec.contour_length)[None, None, :] < s.length[:, :, None]  # (N, C, L)
    dashes = s.dashes[drawn]  # (M, 4)
    assert np.allclose(np.linalg.norm(dashes[:, 2:] - dashes[:, :2], axis=1), spec.paddle_length)
    assert ((dashes >= spec.padding) & (dashes <= spec.size - spec.padding)).all()
    # A curve is a chain: each dash starts within 2 margins of its predecessor's end (its gap), and turns by less
    # than the continuity weight allows (cos^2(min(c * turn, pi/2)) is zero from pi / (2c) on).
    targets = s.dashes[:, :2]  # (N, 2, L, 4)
    gaps = np.linalg.norm(targets[:, :, 1:, 0:2] - targets[:, :, :-1, 2:4], axis=-1)
    assert (gaps <= 2 * spec.margin + 1e-9).all() and (gaps > 0).all()
    direction = np.arctan2(*np.moveaxis(targets[..., 2:4] - targets[..., 0:2], -1, 0))
    turn = np.abs(np.angle(np.exp(1j * np.diff(direction, axis=-1))))
    assert (turn < math.pi / (2 * spec.continuity) + 1e-9).all()


def _dense(segments: np.ndarray, points: int = 41) -> np.ndarray:
    """Points along each segment (..., 4) -> (..., points, 2): an independent way to measure their distance."""
    t = np.linspace(0, 1, points)[:, None]
    return segments[..., None, 0:2] * (1 - t) + segments[..., None, 2:4] * t


@pytest.mark.parametrize("level", LEVELS)
def test_no_dash_comes_near_another_but_its_neighbours(scenes, level) -> None:
    s, _ = scenes[level]
    spec = s.spec
    worst = np.inf
    for n in range(0, len(s.labels), 10):  # every tenth image, all its dashes
        rows = [(c, j) for c in range(s.length.shape[1]) for j in range(s.length[n, c])]
        pts = _dense(np.stack([s.dashes[n, c, j] for c, j in rows]))  # (M, P, 2)
        d = np.linalg.norm(pts[:, None, :, None, :] - pts[None, :, None, :, :], axis=-1).min(axis=(2, 3))  # (M, M)
        for a, (ca, ja) in enumerate(rows):
            for b, (cb, jb) in enumerate(rows):
                if a < b and not (ca == cb and abs(ja - jb) == 1):
                    worst = min(worst, d[a, b])
    # The dense points sit at most half a step off the true nearest points: allow that much below the clearance.
    assert worst >= spec.clearance - spec.paddle_length / 40


@pytest.mark.slow
@pytest.mark.parametrize("level", [(32, 6), (32, 14)])
def test_no_shortcut_on_pixels_or_image_statistics(level) -> None:
    images, labels = pathfinder(2000, *level, seed=0, cache=False)
    train = 1000
    chance_band = 0.06  # 1,000 held-out images: the accuracy of a coin has sd 0.016
    pixels = gen.linear_probe(images.flatten(1), labels, train)
    stats = gen.linear_probe(gen.ink_statistics(images), labels, train)
    assert abs(pixels - 0.5) < chance_band, f"raw pixels predict the label: {pixels:.3f}"
    assert abs(stats - 0.5) < chance_band, f"image statistics predict the label: {stats:.3f}"
    # The same check finds a leak when there is one: joined images one grey level brighter where anything is drawn.
    leaky = images.clone()
    leaky[labels == 1] = torch.where(leaky[labels == 1] > 0, leaky[labels == 1] + 1, leaky[labels == 1])
    assert gen.linear_probe(gen.ink_statistics(leaky), labels, train) > 0.75


def test_chunks_are_cached_by_parameters_and_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = pathfinder(50, 32, 6, seed=0, cache_dir=tmp_path)
    spec = gen.pathfinder_spec(32, 6)
    files = sorted((tmp_path / "pathfinder").rglob("*.npz"))
    assert [f.relative_to(tmp_path) for f in files] == [Path("pathfinder", spec.key(), "seed0", "chunk00000.npz")]
    monkeypatch.setattr(gen, "_chunk_arrays", lambda *a: pytest.fail("a cached chunk was made again"))
    assert all(torch.equal(a, b) for a, b in zip(first, pathfinder(50, 32, 6, seed=0, cache_dir=tmp_path)))
    monkeypatch.undo()
    files[0].write_bytes(b"not an npz file")  # a damaged chunk is made again, not trusted
    assert all(torch.equal(a, b) for a, b in zip(first, pathfinder(50, 32, 6, seed=0, cache_dir=tmp_path)))
    # Other parameters or another generator version read other folders.
    key = spec.key()
    assert dataclasses.replace(spec, continuity=1.5).key() != key
    monkeypatch.setattr(gen, "GENERATOR_VERSION", gen.GENERATOR_VERSION + 1)
    assert spec.key() != key


def _rewrite(path: Path, **arrays: np.ndarray) -> None:
    """A chunk file whose arrays are replaced, keeping the rest of what it holds."""
    with np.load(path, allow_pickle=False) as f:
        kept = {k: f[k] for k in f.files}
    with open(path, "wb") as out:
        np.savez(out, **{**kept, **arrays})


@pytest.mark.parametrize("damage, problem", [
    (lambda p: p.write_bytes(p.read_bytes()[:300_000]), "cannot be read"),  # cut short
    (lambda p: p.write_bytes(bytes(b ^ 0xFF if 2000 <= i < 2064 else b for i, b in enumerate(p.read_bytes()))), "cannot be read"),
    (lambda p: _rewrite(p, labels=np.full(1000, 0.7)), "labels of float64 (1000,), not 1000 uint8 values 0 or 1"),
    (lambda p: _rewrite(p, labels=np.full(1000, -1, dtype=np.int8)), "labels of int8"),
    (lambda p: _rewrite(p, labels=np.full(1000, 1, dtype=np.uint8)), "its contents do not match its digest"),  # relabelled
    (lambda p: _rewrite(p, images=np.zeros((1000, 16, 16), np.uint8)), "images of uint8 (1000, 16, 16), not uint8 (1000, 32, 32)"),
    (lambda p: _rewrite(p, images=np.zeros((1000, 32, 32), np.float32)), "not a regular file of at most"),  # too large
    (lambda p: (lambda kept: (p.unlink(), np.savez(open(p, "wb"), **kept)))(  # as written before chunks had a digest
        {k: v for k, v in np.load(p).items() if k != "digest"}), "no 'digest' in it"),
    (lambda p: (p.unlink(), p.mkdir()), "not a regular file"),
])
def test_a_damaged_chunk_is_made_again_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture, damage, problem: str) -> None:
    """The cache is read back as untrusted input: a chunk is used only when its arrays are of the right type,
    shape and values and match its digest; anything else is made again, and a note names the file."""
    first = pathfinder(50, 32, 6, seed=0, cache_dir=tmp_path, progress=False)
    chunk = next((tmp_path / "pathfinder").rglob("chunk00000.npz"))
    damage(chunk)
    capsys.readouterr()
    again = pathfinder(50, 32, 6, seed=0, cache_dir=tmp_path, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # the images and labels the parameters make
    note = capsys.readouterr().err
    assert f"note: 1 cached Pathfinder chunk(s) are not what these parameters make and are made again (first: {chunk}: " in note
    assert problem in note, note
    if chunk.is_file():  # the remade chunk is trusted again
        capsys.readouterr()
        pathfinder(50, 32, 6, seed=0, cache_dir=tmp_path, progress=False)
        assert capsys.readouterr().err == ""


def test_a_cache_that_cannot_be_written_leaves_the_images_and_no_temporary_file(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    images, _ = pathfinder(50, 32, 6, seed=0, cache_dir=tmp_path, progress=False)
    assert images.shape == (50, 1, 32, 32)
    note = capsys.readouterr().err
    assert "cannot write the Pathfinder cache file" in note and "chunk00000.npz (No space left on device)" in note
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no chunk, no .tmp left behind


@pytest.mark.parametrize("call, message", [
    (lambda: pathfinder(10, size=48), "size must be one of 32, 64 px, got 48"),
    (lambda: pathfinder(10, contour_length=2), "contour_length must be an integer from 3 to 20"),
    (lambda: pathfinder(0), "n must be a positive number of images, got 0"),
    (lambda: pathfinder(10, seed=-1), "seed must be an integer >= 0, got -1"),
])
def test_bad_arguments_are_named(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_pathfinder_as_a_dataset(tmp_path: Path) -> None:
    train, val, info = build_datasets("pathfinder32-6", str(tmp_path / "cache"), limit_train=200, limit_val=100)
    assert (len(train), len(val), info.num_classes, info.in_chans, info.image_size) == (200, 100, 2, 1, 32)
    assert torch.equal(train.images, pathfinder(200, 32, 6, seed=0, cache_dir=tmp_path / "cache")[0])
    assert torch.equal(val.images, pathfinder(100, 32, 6, seed=1, cache_dir=tmp_path / "cache")[0])  # test images: seed 1
    x, y = train.batch(torch.arange(8))
    assert x.shape == (8, 1, 32, 32) and abs(float(train.batch(torch.arange(200))[0].mean())) < 0.2  # about centred
    with pytest.raises(DataError, match="pathfinder32-2: contour_length must be"):
        build_datasets("pathfinder32-2", limit_train=10)
    with pytest.raises(DataError, match="did you mean pathfinder32-14"):
        build_datasets("pathfindr32-14")


def test_scnet_train_on_pathfinder(tmp_path: Path) -> None:
    from scnet.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", "pathfinder32-6", "--data-dir", str(tmp_path / "cache"), "--limit-train", "256",
                 "--limit-val", "64", "--epochs", "1", "--batch-size", "64", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["final_val_acc"] <= 100 and (out / "checkpoint-last.pth").is_file()
    assert len(list((tmp_path / "cache" / "pathfinder").rglob("chunk00000.npz"))) == 2  # training (seed 0) and test (seed 1)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (field 4 of each /proc stat line)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _generating(tmp_path: Path) -> tuple["subprocess.Popen", list[int]]:
    """``scnet train`` on a Pathfinder set it must generate, once its generator workers are running."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    train = subprocess.Popen([sys.executable, "-m", "scnet.cli", "train", "--data", "pathfinder32-9", "--data-dir", str(tmp_path),
                              "--limit-train", "40000", "--limit-val", "1000", "--epochs", "1", "--out", str(tmp_path / "run")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(_children(train.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = _children(train.pid)
    assert len(workers) >= 2, "the generator's workers never started"
    return train, workers


def _gone(pids: list[int], seconds: float = 15.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(Path(f"/proc/{p}").exists() for p in pids)


@pytest.mark.slow
def test_no_generator_worker_outlives_a_killed_run(tmp_path: Path) -> None:
    import signal

    train, workers = _generating(tmp_path)
    train.send_signal(signal.SIGKILL)
    train.wait(timeout=30)
    assert _gone(workers), "a generator worker was left running without its parent"


@pytest.mark.slow
def test_sigterm_during_generation_stops_with_the_usual_line(tmp_path: Path) -> None:
    import signal

    train, workers = _generating(tmp_path)
    train.send_signal(signal.SIGTERM)
    _, err = train.communicate(timeout=60)
    assert train.returncode == 128 + signal.SIGTERM, err
    assert "scnet train: stopped by SIGTERM while generating Pathfinder 32 px, length 9" in err and "run the same command again" in err
    assert "Traceback" not in err and _gone(workers)
    assert not list(tmp_path.rglob(".*.tmp"))  # no chunk half-written
