"""Sharded and streamed data: ``scnet shard``, ``--data wds:...`` and ``--data hf:...``, on images made here.

Every image carries its number in its first pixel (red: number % 256, green: number // 256; PNG, lossless), so a
test can say which images a process, a worker or an epoch saw without trusting the code that read them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scnet.cli import main
from scnet.data import DataError, build_datasets
from scnet.data.shards import ShardedImages, ShardLoader, find_shards

CLASSES = ("ant", "bee", "cat")
TRAIN_PER_CLASS, VAL_PER_CLASS = 16, 4


def _number(image: Image.Image) -> torch.Tensor:
    r, g, _ = image.getpixel((0, 0))
    return torch.tensor(r + 256 * g)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/<class>/ and val/<class>/ of 16x20 noise images, each numbered in its first pixel."""
    root = tmp_path_factory.mktemp("images")
    rng, number = np.random.default_rng(0), 0
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
                pixels[0, 0] = (number % 256, number // 256, 0)
                Image.fromarray(pixels).save(root / split / name / f"{i:02d}.png")
                number += 1
    return root


def _shard(folder: Path, out: Path, size: int) -> dict:
    assert main(["shard", str(folder), str(out), "--shard-size", str(size)]) == 0
    return json.loads((out / "info.json").read_text())


def test_shard_writes_every_file_unchanged_and_reads_back_as_the_folder(folder: Path, tmp_path: Path) -> None:
    index = _shard(folder, tmp_path / "shards", 10)
    assert index["classes"] == list(CLASSES)
    assert index["splits"]["train"]["counts"] == [10, 10, 10, 10, 8] and index["splits"]["val"]["counts"] == [10, 2]
    # Read with Python's tarfile: every source file once, byte for byte, beside its class index.
    written = {}
    for name in index["splits"]["train"]["shards"] + index["splits"]["val"]["shards"]:
        with tarfile.open(tmp_path / "shards" / name) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for member, data in members.items():
            if member.endswith(".png"):
                written[data] = int(members[member[:-4] + ".cls"])
    source = {p.read_bytes(): CLASSES.index(p.parent.name) for p in folder.glob("*/*/*.png")}
    assert written == source and len(written) == 3 * (TRAIN_PER_CLASS + VAL_PER_CLASS)
    # The validation images as the image folder gives them: the same tensors, the same description.
    _, folder_val, folder_info = build_datasets("imagefolder", str(folder), image_size=16)
    train, val, info = build_datasets(f"wds:{tmp_path / 'shards'}", image_size=16)
    assert len(train) == 3 * TRAIN_PER_CLASS and info.classes == folder_info.classes and info.mean == folder_info.mean
    assert info.crop_pct == folder_info.crop_pct and info.num_classes == 3
    expected = sorted((folder_val[i][0] for i in range(len(folder_val))), key=lambda t: t.sum().item())
    got = sorted((x for xs, _ in ShardLoader(val, 5, 0, 0, 1, train=False) for x in xs), key=lambda t: t.sum().item())
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
    with pytest.raises(DataError, match="already holds shards"):
        main(["shard", str(folder), str(tmp_path / "shards"), "--debug"])
    _shard(folder, tmp_path / "again", 10)  # the same images, the same bytes
    assert all((tmp_path / "again" / n).read_bytes() == (tmp_path / "shards" / n).read_bytes() for n in index["splits"]["train"]["shards"])


def _numbers_seen(shards: Path, world: int, workers: int, epoch: int, batch: int = 4, start: int = 0) -> list[list[int]]:
    """The image numbers each process reads in ``epoch``, in order."""
    seen = []
    for rank in range(world):
        dataset = ShardedImages(find_shards(str(shards), "train", "error", 16), _number, shuffle=True, seed=3)
        loader = ShardLoader(dataset, batch, workers, rank, world, train=True)
        loader.set_epoch(epoch, start)
        seen.append([int(n) for numbers, labels in loader for n in numbers])
        assert len(seen[-1]) == (len(loader) - start) * batch  # every process takes the same number of batches
    return seen


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 2)])
def test_each_process_and_worker_reads_its_own_shards_every_image_once_an_epoch(folder: Path, tmp_path: Path, world: int,
                                                                                workers: int) -> None:
    _shard(folder, tmp_path / "even", 12)  # 4 shards of 12: one per (process, worker) when 2 x 2
    train_numbers = set(range(3 * TRAIN_PER_CLASS))
    first, second = (_numbers_seen(tmp_path / "even", world, workers, e) for e in (0, 1))
    for epoch in (first, second):
        flat = [n for rank in epoch for n in rank]
        assert sorted(flat) == sorted(train_numbers)  # each once, none twice
    assert first != second and first == _numbers_seen(tmp_path / "even", world, workers, 0)  # seeded per epoch
    assert _numbers_seen(tmp_path / "even", world, workers, 1, start=2) == [rank[2 * 4:] for rank in second]  # resumed
    # Shards that do not split evenly: never an image twice; every process as many batches as the one with the fewest.
    _shard(folder, tmp_path / "uneven", 10)
    seen = [n for rank in _numbers_seen(tmp_path / "uneven", world, workers, 0) for n in rank]
    assert len(set(seen)) == len(seen) and set(seen) <= train_numbers and len(seen) >= 32


@pytest.mark.slow
def test_two_processes_read_every_image_once_an_epoch(folder: Path, tmp_path: Path) -> None:
    """The same under torchrun: two processes with a loader worker each, every image seen once per epoch."""
    _shard(folder, tmp_path / "even", 12)
    script = tmp_path / "ranks.py"
    script.write_text(  # a main guard: loader workers start from a fork server, which imports this file again
        "import json, sys, torch.distributed as dist\n"
        "from test_shards import _number\n"
        "from scnet.data.shards import ShardedImages, ShardLoader, find_shards\n"
        "if __name__ == '__main__':\n"
        "    dist.init_process_group('gloo')\n"
        "    rank, world = dist.get_rank(), dist.get_world_size()\n"
        "    images = ShardedImages(find_shards(sys.argv[1], 'train', 'error', 16), _number, True, 3)\n"
        "    loader, seen = ShardLoader(images, 4, 1, rank, world, True), []\n"
        "    for epoch in (0, 1):\n"
        "        loader.set_epoch(epoch)\n"
        "        seen.append([int(n) for numbers, _ in loader for n in numbers])\n"
        "    everyone = [None] * world\n"
        "    dist.all_gather_object(everyone, seen)\n"
        "    if rank == 0:\n"
        "        print(json.dumps(everyone))\n"
        "    dist.destroy_process_group()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
                           str(tmp_path / "even")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    everyone = json.loads(done.stdout.strip().splitlines()[-1])
    for epoch in (0, 1):
        by_rank = [everyone[rank][epoch] for rank in (0, 1)]
        assert len(by_rank[0]) == len(by_rank[1]) == 24 and sorted(by_rank[0] + by_rank[1]) == list(range(48))
    assert everyone[0][0] != everyone[0][1]


def test_a_run_on_shards_resumes_mid_epoch_to_the_uninterrupted_weights(folder: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    from scnet.files import read_checkpoint
    from scnet.train import TrainConfig, fit, merge_config
    from scnet.train.signals import StopSignals, TrainingStopped

    _shard(folder, tmp_path / "shards", 10)
    recipe = dict(model="scnet_demo", data=f"wds:{tmp_path / 'shards'}", image_size=16, epochs=2, batch_size=8,
                  lr=0.05, warmup_epochs=0, auto_augment="rand-m9-mstd0.5-inc1")
    quiet = dict(show_progress=False, log=lambda *a: None)
    fit(TrainConfig(**recipe, out=str(tmp_path / "straight")).validate(), **quiet)
    calls = []

    def stop_at_third_step(self, device):
        calls.append(1)
        return signal.SIGINT if len(calls) == 3 else None

    with monkeypatch.context() as patched:
        patched.setattr(StopSignals, "agreed", stop_at_third_step)
        with pytest.raises(TrainingStopped, match="at epoch 1, step 3 of 6"):
            fit(TrainConfig(**recipe, out=str(tmp_path / "cut")).validate(), **quiet)
    fit(merge_config(flags=dict(resume=str(tmp_path / "cut"))), **quiet)
    a, b = (read_checkpoint(tmp_path / run / "checkpoint-last.pth") for run in ("straight", "cut"))
    assert tuple(b["data_info"]["classes"]) == CLASSES
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_shards_by_pattern_and_pipe_are_counted_and_their_faults_named(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    _shard(folder, out, 10)
    (out / "info.json").rename(tmp_path / "info.json")  # no index: the shards are read once to count them
    pattern = f"{out}/train-{{000000..000004}}.tar"
    train, val, info = build_datasets(f"wds:{pattern}", image_size=16, val_data=f"wds:pipe:cat {out}/val-00000{{0..1}}.tar")
    assert (len(train), len(val), info.classes) == (48, 12, ("0", "1", "2"))  # classes by index without the index file
    with pytest.raises(DataError, match=r"give the validation shards with val_data wds:PATTERN"):
        build_datasets(f"wds:{pattern}")
    with pytest.raises(DataError, match=r"val_data names validation shards; fashion_mnist has its own"):
        build_datasets("fashion_mnist", val_data=f"wds:{pattern}")
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(f"wds:{out}/train-{{000000..000009}}.tar", val_data=f"wds:{pattern}")
    os.mkfifo(tmp_path / "fifo.tar")  # reading it would wait for a writer forever
    with pytest.raises(DataError, match="fifo.tar is not a regular file"):
        build_datasets(f"wds:{tmp_path}/fifo.tar", val_data=f"wds:{pattern}")
    with pytest.raises(DataError, match=r"cannot read shard pipe:false"):
        build_datasets("wds:pipe:false", val_data=f"wds:{pattern}")
    (tmp_path / "junk.tar").write_bytes(b"not a tar file" * 100)
    with pytest.raises(DataError, match=r"cannot read shard .*junk.tar"):
        build_datasets(f"wds:{tmp_path}/junk.tar", val_data=f"wds:{pattern}")
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    with pytest.raises(DataError, match=r"empty.tar holds no readable images"):
        build_datasets(f"wds:{tmp_path}/empty.tar", val_data=f"wds:{pattern}")
    # A damaged image inside a shard: named (shard and key), or left out and counted with --bad-images skip.
    with tarfile.open(out / "train-000000.tar") as tar, tarfile.open(tmp_path / "bad.tar", "w") as bad:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            if member.name.startswith("00000003."):
                data = data if member.name.endswith(".cls") else data[:40]
            member.size = len(data)
            bad.addfile(member, __import__("io").BytesIO(data))
    with pytest.raises(DataError, match=r"bad.tar: 00000003 cannot be read .* bad_images skip"):
        build_datasets(f"wds:{tmp_path}/bad.tar", val_data=f"wds:{pattern}")
    train, _, info = build_datasets(f"wds:{tmp_path}/bad.tar", val_data=f"wds:{pattern}", bad_images="skip")
    assert len(train) == 9 and info.skipped_images == 1


def _hf_dataset(folder: Path, out: Path) -> None:
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as HFImage

    def split(name: str) -> Dataset:
        files = sorted(folder.glob(f"{name}/*/*.png"))
        return Dataset.from_dict({"picture": [str(f) for f in files], "copy": [str(f) for f in files],
                                  "kind": [CLASSES.index(f.parent.name) for f in files]},
                                 features=Features({"picture": HFImage(), "copy": HFImage(), "kind": ClassLabel(names=list(CLASSES))}))

    DatasetDict(train=split("train"), validation=split("val")).save_to_disk(str(out))


def test_a_saved_hugging_face_dataset_reads_as_the_folder(folder: Path, tmp_path: Path) -> None:
    _hf_dataset(folder, tmp_path / "hf")
    with pytest.raises(DataError, match="which column holds the images.*several: picture, copy"):
        build_datasets(f"hf:{tmp_path / 'hf'}", image_size=16)
    train, val, info = build_datasets(f"hf:{tmp_path / 'hf'}#image=picture", image_size=16)
    _, folder_val, folder_info = build_datasets("imagefolder", str(folder), image_size=16)
    assert info.classes == CLASSES and info.num_classes == 3 and (len(train), len(val)) == (48, 12)
    assert info.mean == folder_info.mean and info.crop_pct == folder_info.crop_pct
    for i in range(len(val)):  # both list the files sorted by class, then name
        assert torch.equal(val[i][0], folder_val[i][0]) and val[i][1] == folder_val[i][1]
    with pytest.raises(DataError, match="has no column 'photo'"):
        build_datasets(f"hf:{tmp_path / 'hf'}#image=photo", image_size=16)
    with pytest.raises(DataError, match="not a folder"):
        build_datasets(f"hf:{tmp_path / 'nothing'}", image_size=16)
