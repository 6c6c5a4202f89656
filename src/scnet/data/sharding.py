"""An image folder tree written as WebDataset shards (``scnet shard``), read back with ``--data wds:OUT``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError
from .shards import SHARD_INFO, write_shards

__all__ = ["DEFAULT_SHARD_SIZE", "shard_image_folder"]

DEFAULT_SHARD_SIZE = 1000  # images a shard: ~100 MB of ImageNet JPEGs, the size webdataset's documentation suggests


def shard_image_folder(folder: Path, out: Path, shard_size: int = DEFAULT_SHARD_SIZE, bad_images: str = "error",
                       progress: bool = True) -> dict[str, Any]:
    """Write ``folder``'s ``train/<class>/*`` and ``val/<class>/*`` images into ``out/{train,val}-NNNNNN.tar`` and
    ``out/info.json`` (classes, each shard's length); return the index.

    The images are screened first, as training screens an image folder (``bad_images``: "error" stops at the first
    unreadable file, "skip" leaves them out), so the shards hold only readable images and training need not read
    them twice. Training images are written in a seeded random order, so a shard holds every class, not one.
    The index is written last: a folder without it is an interrupted write, and is written again.
    """
    import random

    from ..files import write_text_atomically
    from .datasets import build_datasets

    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise DataError(f"{{shard_size}} must be a whole number of images, at least 1, got {shard_size!r}", "shard_size")
    if (out / SHARD_INFO).exists():
        raise DataError(f"{out} already holds shards ({SHARD_INFO}); choose another folder or remove it")
    train, val, info = build_datasets("imagefolder", str(folder), bad_images=bad_images)
    out.mkdir(parents=True, exist_ok=True)
    order = list(train.samples)
    random.Random(0).shuffle(order)
    index = {"format": "webdataset: KEY.<image> + KEY.cls (class index)", "classes": list(info.classes),
             "source": str(folder), "skipped_images": info.skipped_images,
             "splits": {"train": write_shards(order, out, "train", shard_size, progress),
                        "val": write_shards(list(val.samples), out, "val", shard_size, progress)}}
    write_text_atomically(out / SHARD_INFO, json.dumps(index, indent=1) + "\n")
    return index
