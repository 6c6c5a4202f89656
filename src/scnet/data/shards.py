"""WebDataset shards: tar files of ``KEY.jpg`` (or png, webp, ...) + ``KEY.cls`` members, read as a stream.

Why shards: a million image files over a network file system cost a million opens; a few hundred tar files read
front to back cost a few hundred, and stream from object storage through ``pipe:`` commands (``pipe:aws s3 cp
s3://bucket/train-000000.tar -``). webdataset opens and unpacks them; what is ours is who reads what:

- shard ``i`` belongs to process ``i % world`` of a torchrun job, and within it to loader worker
  ``(i // world) % workers``: every process and worker reads its own shards, none twice;
- each epoch a worker visits its shards in a seeded order through a seeded shuffle buffer, and every image is
  augmented with a seed of its own (``engine.augment_seed``): an epoch is a function of (seed, epoch, workers);
- every process takes the same number of batches an epoch (the fewest any process has), so no process waits for a
  batch that never comes; with shards that split evenly (``write_shards`` makes them equal) every image is seen once.

A set's class names and shard lengths come from the ``info.json`` that ``write_shards`` (``scnet shard``) leaves
beside its shards; without one, the shards are read once before training to count them (and to find unreadable
images, as an image folder is screened).
"""
from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import DataError
from .loading import loader_options

__all__ = ["IMAGE_MEMBERS", "SHARD_INFO", "ShardLoader", "ShardSet", "ShardedImages", "find_shards", "write_shards"]

SHARD_INFO = "info.json"
IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff")
SHUFFLE_BUFFER = 1000  # images a worker mixes across (its shards' order is shuffled too), as webdataset's examples


@dataclass(frozen=True)
class ShardSet:
    """The shards of one split: where each is, how many images it holds, the class names, the samples to leave out."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]
    classes: tuple[str, ...]
    skip: frozenset = frozenset()  # (shard index, key) of unreadable images left out (--bad-images skip)

    def limited(self, limit: Optional[int]) -> "ShardSet":
        """The first ``limit`` images, in shard order: later shards shortened or dropped."""
        if limit is None or limit >= sum(self.counts):
            return self
        caps, left = [], limit
        for count in self.counts:
            caps.append(min(count, left))
            left -= caps[-1]
        return replace(self, counts=tuple(caps))


def _webdataset() -> Any:
    try:
        import webdataset
    except ImportError as e:
        raise ImportError("shards (--data wds:...) need the webdataset package: pip install 'scnet-pytorch[shards]' "
                          "(or pip install webdataset)") from e
    return webdataset


# ---- finding the shards ----------------------------------------------------------------------------------------
def _expand(pattern: str) -> list[str]:
    """The shard urls of a brace pattern (``train-{000000..000127}.tar``); local files must exist and be files."""
    _webdataset()
    from braceexpand import braceexpand  # webdataset's own requirement

    urls = [u for part in pattern.split("::") for u in braceexpand(part)]
    for url in urls:
        if _is_local(url):
            path = Path(url.removeprefix("file:")).expanduser()
            if not path.exists():
                raise DataError(f"shard {url} does not exist (from {pattern!r})")
            if not path.is_file():
                raise DataError(f"shard {url} is not a regular file (a folder, FIFO or device); refused before reading")
    return urls


def _is_local(url: str) -> bool:
    return not url.startswith(("pipe:", "http://", "https://", "gs://", "s3://", "ais://"))


def _read_info(folder: Path) -> Optional[dict[str, Any]]:
    path = folder / SHARD_INFO
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        assert isinstance(info["classes"], list) and isinstance(info["splits"], dict)
        return info
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
        raise DataError(f"{path} is not a shard index written by scnet shard ({type(e).__name__}: {e}); remove it to "
                        f"count the shards instead, or write them again") from None


def find_shards(spec: str, split: str, bad_images: str, short_side: int) -> ShardSet:
    """The shards ``spec`` names for ``split`` ("train" or "val"): a folder that ``write_shards`` made, or a brace
    pattern of files or ``pipe:`` commands. Lengths and classes come from ``info.json`` when it lists every shard,
    else from reading the shards once (with ``bad_images``: "error" stops at an unreadable image, "skip" leaves it out).
    """
    folder = Path(spec).expanduser()
    if folder.is_dir():
        info = _read_info(folder)
        if info is None or split not in info["splits"]:
            raise DataError(f"{folder} holds no {SHARD_INFO} with a {split!r} split; give a pattern of shards "
                            f"(e.g. {folder}/{split}-{{000000..000009}}.tar) or write them with scnet shard")
        entry = info["splits"][split]
        return ShardSet(tuple(str(folder / name) for name in entry["shards"]), tuple(entry["counts"]), tuple(info["classes"]))
    urls = _expand(spec)
    if not urls:
        raise DataError(f"the shard pattern {spec!r} names no shards")
    known = _known_counts(urls)
    if known is not None:
        return ShardSet(tuple(urls), *known)
    return count_shards(urls, bad_images, short_side)


def _known_counts(urls: Sequence[str]) -> Optional[tuple[tuple[int, ...], tuple[str, ...]]]:
    """Lengths and classes of local shards from the index beside them, when it lists every one."""
    if not all(_is_local(u) for u in urls):
        return None
    folder = Path(urls[0].removeprefix("file:")).expanduser().parent
    info = _read_info(folder)
    if info is None:
        return None
    lengths = {name: n for entry in info["splits"].values() for name, n in zip(entry["shards"], entry["counts"])}
    names = [Path(u).name for u in urls]
    if not all(Path(u.removeprefix("file:")).expanduser().parent == folder and n in lengths for u, n in zip(urls, names)):
        return None
    return tuple(lengths[n] for n in names), tuple(info["classes"])


def count_shards(urls: Sequence[str], bad_images: str, short_side: int) -> ShardSet:
    """Read every shard once: its length, the largest class index, and (screened as an image folder is) the images
    that cannot be read. Classes are then named by their index."""
    from tqdm.auto import tqdm

    from .images import unreadable

    counts, skip, top = [], set(), -1
    for index, url in enumerate(tqdm(urls, desc="counting shards", leave=False, disable=None)):
        n = 0
        for key, image, label in _samples(url):
            reason = unreadable(f"{url} {key}", short_side, image)
            if reason is not None:
                if bad_images == "error":
                    raise DataError(f"{url}: {key} cannot be read ({reason}); pass {{bad_images}} skip to leave such "
                                    f"images out", "bad_images")
                skip.add((index, key))
                continue
            n, top = n + 1, max(top, label)
        if n == 0:
            raise DataError(f"shard {url} holds no readable images")
        counts.append(n)
    return ShardSet(tuple(urls), tuple(counts), tuple(str(c) for c in range(top + 1)), frozenset(skip))


def _samples(url: str) -> Iterator[tuple[str, bytes, int]]:
    """(key, encoded image, class index) of every sample of one shard, in order; a DataError names the shard."""
    wds = _webdataset()
    try:
        for sample in wds.tarfile_samples([{"url": url}]):
            key = sample["__key__"]
            image = next((sample[k] for k in IMAGE_MEMBERS if k in sample), None)
            if image is None or "cls" not in sample:
                raise DataError(f"{url}: sample {key} lacks an image ({'/'.join(IMAGE_MEMBERS)}) or its .cls member "
                                f"(has: {', '.join(k for k in sample if not k.startswith('__'))})")
            try:
                label = int(sample["cls"].decode().strip())
            except (UnicodeDecodeError, ValueError):
                raise DataError(f"{url}: {key}.cls is not a class index ({sample['cls'][:20]!r})") from None
            if label < 0:
                raise DataError(f"{url}: {key}.cls is {label}, a negative class index")
            yield key, image, label
    except DataError:
        raise
    except Exception as e:  # tarfile, gopen's pipes and files: a damaged or missing shard, a failed command
        raise DataError(f"cannot read shard {url} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})") from None


# ---- reading an epoch ------------------------------------------------------------------------------------------
class ShardedImages(IterableDataset):
    """The images of a ``ShardSet``, transformed, for one process of ``world``: iterate it through a DataLoader (its
    workers split the process's shards) after ``set_epoch``; ``ShardLoader`` does both."""

    def __init__(self, shards: ShardSet, transform: Callable[[Any], torch.Tensor], shuffle: bool, seed: int = 0,
                 short_side: Optional[int] = None) -> None:
        self.shards, self.transform, self.shuffle, self.seed, self.short_side = shards, transform, shuffle, seed, short_side
        self.rank, self.world, self.epoch = 0, 1, 0
        self.first = list(itertools.accumulate(shards.counts, initial=0))  # each image's number: first[shard] + position

    def __len__(self) -> int:
        return sum(self.shards.counts)

    def head(self, limit: int) -> "ShardedImages":
        """The first ``limit`` images, in shard order (later shards cut or left out)."""
        return ShardedImages(self.shards.limited(limit), self.transform, self.shuffle, self.seed, self.short_side)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.shards.classes

    def streams(self, workers: int, rank: Optional[int] = None) -> list[list[int]]:
        """The shard indices each loader worker of process ``rank`` reads (one stream without workers)."""
        rank = self.rank if rank is None else rank
        mine = [i for i, n in enumerate(self.shards.counts) if i % self.world == rank and n > 0]
        return [mine[w::max(workers, 1)] for w in range(max(workers, 1))]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        from .policies import augment_seed, seeded

        worker = get_worker_info()
        shards = self.streams(worker.num_workers if worker else 0)[worker.id if worker else 0]
        rng = random.Random(augment_seed(self.seed, self.epoch, self.rank * 1009 + (worker.id if worker else 0)))
        if self.shuffle:
            rng.shuffle(shards)
        items = self._items(shards)
        for number, image, label in (_buffered(items, SHUFFLE_BUFFER, rng) if self.shuffle else items):
            with seeded(augment_seed(self.seed, self.epoch, number)):  # the crop, flip and policy of this image
                yield self.transform(image), label

    def _items(self, shards: Sequence[int]) -> Iterator[tuple[int, Any, int]]:
        """(image number, PIL image, label) of ``shards`` in order, each cut at its count."""
        from .images import ImageFileError, open_image

        for index in shards:
            url, count, position = self.shards.urls[index], self.shards.counts[index], 0
            for key, data, label in _samples(url):
                if position == count:
                    break
                if (index, key) in self.shards.skip:
                    continue
                try:
                    image = open_image(f"{url} {key}", 3, self.short_side, data)
                except ImageFileError as e:
                    raise DataError(f"{e}: the shard changed since it was counted; write it again (or count it again: "
                                    f"move its {SHARD_INFO} away)") from None
                yield self.first[index] + position, image, label
                position += 1
            if position < count:
                raise DataError(f"shard {url} ended after {position} images, its index says {count}: it changed since "
                                f"it was written; write it again (or move its {SHARD_INFO} away to count it)")


def _buffered(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """``items`` in a seeded shuffled order, holding at most ``size`` at a time."""
    buffer: list[Any] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            j = rng.randrange(len(buffer))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


class ShardLoader:
    """Batches of one process's shards, ``len(self)`` an epoch on every process (training: full batches only, as
    many as the process with the fewest has; validation: every image). ``set_epoch(e, start)`` skips the first
    ``start`` batches of epoch ``e`` (reading them): a run resumed mid-epoch sees the rest of the same epoch.

    Batches come from one worker each, round robin, so an epoch depends on the number of ``workers``: resume with
    the same number for the weights an uninterrupted run would have had."""

    def __init__(self, dataset: ShardedImages, batch_size: int, workers: int, rank: int, world: int, train: bool) -> None:
        dataset.rank, dataset.world = rank, world
        self.dataset, self.batch_size, self.workers, self.train = dataset, batch_size, workers, train
        self.epoch, self.start = 0, 0
        per_rank = [sum(sum(dataset.shards.counts[i] for i in s) // batch_size for s in dataset.streams(workers, r))
                    for r in range(world)]
        self.steps = min(per_rank) if train else None
        if train and self.steps == 0:
            raise DataError(f"a process's shards hold fewer than one batch of {batch_size} images per loader stream "
                            f"(full batches by process: {per_rank}); use a smaller batch or fewer processes or workers", "batch_size")

    @property
    def images_per_epoch(self) -> int:
        """Images trained on an epoch (all processes); the rest of the shards' images wait for a later epoch."""
        return (self.steps or 0) * self.batch_size * self.dataset.world

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        if self.steps is not None:
            return self.steps
        return sum(-(-sum(self.dataset.shards.counts[i] for i in s) // self.batch_size) for s in self.dataset.streams(self.workers))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.dataset.epoch = self.epoch
        loader = DataLoader(self.dataset, batch_size=self.batch_size, drop_last=self.train, **loader_options(self.workers))
        yield from itertools.islice(loader, self.start, self.steps)


# ---- writing ---------------------------------------------------------------------------------------------------
def write_shards(samples: Sequence[tuple[str, int]], out: Path, split: str, shard_size: int,
                 progress: bool = True) -> dict[str, Any]:
    """Write ``samples`` ((image file, class index), in this order) into ``out/{split}-NNNNNN.tar``, ``shard_size``
    each (the last may be shorter), the files' bytes unchanged; return the split's index entry.

    Each shard is written to a temporary name and renamed when complete: a crash leaves whole shards only. Members
    carry a fixed time (an integer, so tar needs no extended header for it: 2 KB less an image), so the same images
    give the same bytes."""
    import os

    from tqdm.auto import tqdm

    wds = _webdataset()

    names, counts = [], []
    for first in tqdm(range(0, len(samples), shard_size), desc=f"writing {split} shards", disable=not progress or None, leave=False):
        name = f"{split}-{len(names):06d}.tar"
        part = out / f".{name}.{os.getpid()}.tmp"
        chunk = samples[first:first + shard_size]
        with wds.TarWriter(str(part), encoder=False, mtime=0) as sink:  # a fixed time: the same shards every time
            for number, (path, label) in enumerate(chunk, start=first):
                suffix = Path(path).suffix.lower().lstrip(".")
                sink.write({"__key__": f"{number:08d}", "jpg" if suffix == "jpeg" else suffix: Path(path).read_bytes(),
                            "cls": str(label).encode()})
        part.replace(out / name)
        names.append(name)
        counts.append(len(chunk))
    return {"shards": names, "counts": counts}
