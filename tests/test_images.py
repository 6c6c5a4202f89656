"""Image files read one way, with bounded work: extreme aspect ratios and decompression bombs refused before any
pixel is decoded or resized (under a 4 GB address-space limit, so a regression fails fast instead of exhausting the
machine); 16-bit images scaled alike in training and predict; symbolic-link loops in an ImageFolder refused."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scnet.cli import main
from scnet.data import DataError, DataInfo, build_datasets
from scnet.data.images import MAX_RESIZED_PIXELS, open_image
from scnet.predict import load_image

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _bomb(path: Path, side: int = 30000) -> Path:
    """A PNG whose header declares side x side pixels (1-bit), with a few bytes of data: 80 bytes on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def _strip(path: Path, width: int = 100_000) -> Path:
    Image.new("L", (width, 1), 128).save(path)  # a few hundred bytes
    return path


def _bounded(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter limited to 4 GB of address space (torch's import needs about that)."""
    script = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n" + textwrap.dedent(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)


@pytest.mark.slow
def test_predict_and_cam_refuse_an_extreme_strip_before_resizing(tmp_path: Path) -> None:
    strip = _strip(tmp_path / "strip.png")
    assert strip.stat().st_size < 1000
    for command in ("predict", "cam"):
        done = _bounded(f"""
            import sys
            from scnet.cli import main
            sys.exit(main([{command!r}, "strip.png", "--model", "scnet50"] + (["--out", "cam"] if {command!r} == "cam" else [])))
            """, tmp_path)
        err = done.stderr.strip()
        assert done.returncode == 2, err
        assert len(err.splitlines()) == 1 and "strip.png is 100000x1 px" in err and "over the limit" in err, err


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = _bomb(tmp_path / "bomb.png")
    with pytest.raises(DataError, match="bomb.png declares more pixels than allowed.*refused before decoding"):
        open_image(bomb, 3)
    info = DataInfo("x", 10, 3, 224, (0.5,) * 3, (0.25,) * 3, tuple("abcdefghij"))
    with pytest.raises(DataError, match="declares more pixels"):
        load_image(bomb, info)


def test_resize_limit_restates_the_arithmetic(tmp_path: Path) -> None:
    # 256 px short side: a long side of exactly MAX / 256 px is allowed, one pixel more is not.
    from scnet.data.images import check_resized

    check_resized((MAX_RESIZED_PIXELS // 256, 256), 256, "fits")
    with pytest.raises(DataError, match="over the limit"):
        check_resized((MAX_RESIZED_PIXELS // 256 + 1, 256), 256, "over")
    with pytest.raises(DataError, match="would make it 25,600,000 px long"):
        check_resized((100_000, 1), 256, "strip")


def _folder(root: Path, bad: Path | None = None) -> Path:
    """train/ and val/ with two classes of small RGB images (and ``bad`` copied into val/cat)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    if bad is not None:
        (root / "val" / "cat" / bad.name).write_bytes(bad.read_bytes())
    return root


@pytest.mark.parametrize("make", [_strip, _bomb])
def test_an_image_folder_screens_oversized_files_by_the_bad_images_policy(tmp_path: Path, make) -> None:
    bad = make(tmp_path / "bad.png")
    root = _folder(tmp_path / "data", bad)
    with pytest.raises(DataError, match="bad.png cannot be read .*pass bad_images skip"):
        build_datasets("imagefolder", str(root), image_size=32)
    train, val, info = build_datasets("imagefolder", str(root), image_size=32, bad_images="skip")
    assert (len(train), len(val), info.skipped_images) == (6, 6, 1)


def test_sixteen_bit_images_mean_the_same_in_training_and_predict(tmp_path: Path) -> None:
    values = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # a 16-bit grayscale PNG
    with Image.open(path) as img:
        assert img.mode.startswith("I")
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(np.asarray(open_image(path, 1)), expected)
    assert np.array_equal(np.asarray(open_image(path, 3))[..., 0], expected)  # the training loader's (RGB) reading
    info = DataInfo("x", 2, 1, 32, (0.0,), (1.0,), ("a", "b"))
    assert torch.allclose(load_image(path, info)[0], torch.from_numpy(expected).float() / 255)  # predict: same pixels
    root = _folder(tmp_path / "data")
    (root / "val" / "cat" / "deep.png").write_bytes(path.read_bytes())
    _, val, _ = build_datasets("imagefolder", str(root), image_size=32)
    index = [p for p, _ in val.samples].index(str(root / "val" / "cat" / "deep.png"))
    assert np.array_equal(np.asarray(val.loader(val.samples[index][0]))[..., 0], expected)
    assert (expected == 255).mean() < 0.01  # not clipped: PIL's own conversion would make 99.6 % of them white


def test_a_symlink_loop_in_an_image_folder_is_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    os.symlink("..", root / "train" / "cat" / "loop")
    with pytest.raises(DataError, match=r"cat/loop/.*: a symbolic link leads back into .* \(a link loop\?\)"):
        build_datasets("imagefolder", str(root), image_size=32)


def test_a_class_folder_kept_elsewhere_through_a_link_is_fine(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    elsewhere = tmp_path / "disk2" / "dog"
    (root / "train" / "dog").rename(elsewhere.parent.mkdir(parents=True) or elsewhere)
    os.symlink(elsewhere, root / "train" / "dog")
    train, _, _ = build_datasets("imagefolder", str(root), image_size=32)
    assert len(train) == 6 and sorted(train.targets) == [0, 0, 0, 1, 1, 1]


def test_float_images_are_read_as_intensities_in_zero_to_one(tmp_path: Path) -> None:
    values = (np.arange(32 * 32, dtype=np.float32).reshape(32, 32) / (32 * 32 - 1))  # 0 .. 1
    path = tmp_path / "float.tif"
    Image.fromarray(values, mode="F").save(path)  # a 32-bit float TIFF (mode F)
    expected = np.round(values.astype(np.float64) * 255).astype(np.uint8)
    assert np.array_equal(np.asarray(open_image(path, 1)), expected)  # not black: Pillow's own conversion gives 0 and 1
    assert np.array_equal(np.asarray(open_image(path, 3))[..., 0], expected)  # training's and eval's reading
    info = DataInfo("x", 2, 1, 32, (0.0,), (1.0,), ("a", "b"))
    assert torch.allclose(load_image(path, info)[0], torch.from_numpy(expected).float() / 255)  # predict's
    Image.fromarray(values * 255, mode="F").save(path)  # a float image in 0 .. 255: no stated range, refused
    with pytest.raises(DataError, match=r"float.tif is a float image with values from 0 to 255, not intensities in \[0, 1\]"):
        open_image(path, 1)


def test_predict_refuses_a_fifo_among_its_images_at_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import signal

    good = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(good)
    fifo = tmp_path / "b.png"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    signal.alarm(60)
    try:
        assert main(["predict", "--model", "scnet_demo", str(good), str(fifo)]) == 2
    finally:
        signal.alarm(0)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{fifo} is not a regular file" in err, err


def test_a_limit_on_an_image_folder_draws_every_class(tmp_path: Path) -> None:
    """An ImageFolder lists its files sorted by class: its first N would all be cats, and a model trained on them
    answers "cat" always. A limit draws each class's share instead, the same draw every time."""
    root = _folder(tmp_path / "data")
    train, val, _ = build_datasets("imagefolder", str(root), limit_train=2, limit_val=4, image_size=32)
    labels = [train.dataset.targets[i] for i in train.indices]
    assert sorted(labels) == [0, 1] and sorted(val.dataset.targets[i] for i in val.indices) == [0, 0, 1, 1]
    again, _, _ = build_datasets("imagefolder", str(root), limit_train=2, limit_val=4, image_size=32)
    assert list(again.indices) == list(train.indices)


def test_an_image_folder_of_one_class_or_many_empty_ones_is_one_short_line(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    for split in ("train", "val"):
        for f in (root / split / "dog").iterdir():
            f.unlink()
        (root / split / "dog").rmdir()
    with pytest.raises(DataError, match="train has one class folder \\(cat\\); a classifier needs two or more"):
        build_datasets("imagefolder", str(root), image_size=32)
    empty = tmp_path / "empty"
    for split in ("train", "val"):
        for i in range(2000):
            (empty / split / f"class{i:05d}").mkdir(parents=True)
    with pytest.raises(DataError) as refused:
        build_datasets("imagefolder", str(empty), image_size=32)
    assert len(str(refused.value)) < 500 and str(refused.value).endswith(" ...")


def test_an_exif_orientation_is_honoured_in_training_and_predict_alike(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white, as stored
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": a phone held upright
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)
    upright = np.asarray(open_image(path, 3))
    assert upright.shape == (40, 20, 3)  # stored 40 wide, shown 20 wide
    assert upright[:20].mean() > 200 and upright[20:].mean() < 50  # the white half is on top once turned
    info = DataInfo("x", 2, 3, 20, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), ("a", "b"))
    assert load_image(path, info).shape == (3, 20, 20)  # predict reads it turned too (then resizes and crops)


def test_an_image_folders_policy_depends_on_the_samples_seed_alone(tmp_path: Path) -> None:
    """``--auto-augment`` on an image folder: the policy runs on each PIL image after the crop and flip, and a sample
    of an epoch comes out the same however often (and in whichever worker) it is read, since Python's, NumPy's and
    torch's generators are seeded for it (``SeededSamples``) and restored after; another epoch draws anew."""
    import random

    from scnet.data.policies import policy_transform
    from scnet.train.engine import SeededSamples

    train, _, info = build_datasets("imagefolder", str(_folder(tmp_path / "data")), image_size=32,
                                    auto_augment="rand-m9-mstd0.5-inc1")
    assert policy_transform("rand-m9-mstd0.5-inc1", 32, tuple(info.mean)) in train.transform.transforms
    samples = SeededSamples(train, seed=5)
    state = random.getstate()
    first, again = samples[3][0], samples[3][0]
    assert torch.equal(first, again) and random.getstate() == state
    samples.set_epoch(1)
    assert not torch.equal(samples[3][0], first)
