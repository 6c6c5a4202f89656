"""Hugging Face datasets saved to disk (``DatasetDict.save_to_disk``), read as map-style datasets.

The image column is read undecoded and decoded by ``images.open_image``, as every other image file here: the same
pixel limits, EXIF orientation and 16-bit scaling, and unreadable images screened before training
(``--bad-images``). Columns are found by their features (one ``Image`` column, one ``ClassLabel`` column, whose
names become the classes) or named: ``hf:PATH#image=img,label=fine_label``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.data import Dataset

from ..errors import DataError

__all__ = ["HFImages", "load_hf"]

VAL_SPLITS = ("validation", "val", "test")


class HFImages(Dataset):
    """(transformed image, class index) of the rows ``indices`` of one split."""

    def __init__(self, split: Any, image: str, label: str, transform: Callable[[Any], torch.Tensor], short_side: Optional[int],
                 name: str, indices: Optional[list[int]] = None) -> None:
        from datasets import Image

        self.split = split.cast_column(image, Image(decode=False))
        self.image, self.label, self.transform, self.short_side, self.name = image, label, transform, short_side, name
        self.indices = list(range(len(split))) if indices is None else indices
        self.targets = [int(t) for t in self.split.select(self.indices)[label]]  # for stratified subsets

    def __len__(self) -> int:
        return len(self.indices)

    def only(self, rows: list[int]) -> "HFImages":
        """A copy that holds the rows ``rows`` (a subset of this one's)."""
        import copy

        label_of = dict(zip(self.indices, self.targets))
        kept = copy.copy(self)
        kept.indices, kept.targets = list(rows), [label_of[r] for r in rows]
        return kept

    def encoded(self, i: int) -> tuple[str, Optional[bytes], int]:
        """(the name of row ``indices[i]``, its encoded image, its label)."""
        row = self.split[self.indices[i]]
        cell = row[self.image]
        where = f"{self.name} row {self.indices[i]}"
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if data is None and isinstance(cell, dict) and cell.get("path"):
            data = Path(cell["path"]).read_bytes()
        return where, data, int(row[self.label])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from .images import open_image

        where, data, label = self.encoded(i)
        if data is None:
            raise DataError(f"{where} has no image")
        return self.transform(open_image(where, 3, self.short_side, data)), label


def _columns(split: Any, named: dict[str, str], where: str) -> tuple[str, str, Optional[tuple[str, ...]]]:
    """(image column, label column, class names of a ClassLabel column or None)."""
    from datasets import ClassLabel, Image

    features = split.features
    for role in named:
        if named[role] not in features:
            raise DataError(f"{where} has no column {named[role]!r} (its columns: {', '.join(features)})")
    found = {"image": [c for c, f in features.items() if isinstance(f, Image)],
             "label": [c for c, f in features.items() if isinstance(f, ClassLabel)] or [c for c in ("label", "labels") if c in features]}
    chosen = {}
    for role in ("image", "label"):
        if role in named:
            chosen[role] = named[role]
        elif len(found[role]) == 1:
            chosen[role] = found[role][0]
        else:
            what = "several: " + ", ".join(found[role]) if found[role] else "none"
            raise DataError(f"{where}: which column holds the {role}s? found {what}; name it: hf:PATH#image=COLUMN,label=COLUMN")
    feature = features[chosen["label"]]
    return chosen["image"], chosen["label"], tuple(feature.names) if isinstance(feature, ClassLabel) else None


def _parse(spec: str) -> tuple[Path, dict[str, str]]:
    path, _, columns = spec.partition("#")
    named = {}
    for part in filter(None, columns.split(",")):
        role, _, column = part.partition("=")
        if role not in ("image", "label") or not column:
            raise DataError(f"hf:{spec}: {part!r} is not image=COLUMN or label=COLUMN")
        named[role] = column
    return Path(path).expanduser(), named


def _require_datasets() -> None:
    try:
        import datasets  # noqa: F401
    except ImportError as e:
        raise ImportError("--data hf:... needs Hugging Face's datasets package: pip install 'scnet-pytorch[hf]' "
                          "(or pip install datasets)") from e


def load_hf(spec: str, train_tf: Callable, val_tf: Callable, short_side: Optional[int]) -> tuple[HFImages, HFImages, tuple[str, ...]]:
    """(train, validation, class names) of ``hf:PATH[#image=..,label=..]``: a ``DatasetDict`` saved to disk with a
    ``train`` split and a ``validation``, ``val`` or ``test`` one."""
    _require_datasets()
    from datasets import DatasetDict, load_from_disk

    path, named = _parse(spec)
    if not path.is_dir():
        raise DataError(f"hf:{spec}: {path} is not a folder (a Hugging Face DatasetDict saved with save_to_disk)")
    try:
        saved = load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError or its own for what is not a saved dataset
        raise DataError(f"cannot read {path} as a saved Hugging Face dataset ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(saved, DatasetDict):
        raise DataError(f"{path} holds one split, not a DatasetDict with train and validation splits")
    val_name = next((s for s in VAL_SPLITS if s in saved), None)
    if "train" not in saved or val_name is None:
        raise DataError(f"{path} has the splits {', '.join(saved)}; it needs train and one of {', '.join(VAL_SPLITS)}")
    image, label, names = _columns(saved["train"], named, f"{path} (train)")
    train = HFImages(saved["train"], image, label, train_tf, short_side, f"{path} train")
    val = HFImages(saved[val_name], image, label, val_tf, short_side, f"{path} {val_name}")
    top = max(max(train.targets, default=-1), max(val.targets, default=-1))
    if min(min(train.targets, default=0), min(val.targets, default=0)) < 0:
        raise DataError(f"{path}: the {label} column holds negative labels")
    classes = names if names is not None else tuple(str(c) for c in range(top + 1))
    if top >= len(classes):
        raise DataError(f"{path}: label {top} in the {label} column, but {len(classes)} class names")
    return train, val, classes


def screen(dataset: HFImages, policy: str) -> tuple[HFImages, int]:
    """Decode every image once before training, as an image folder is screened: raise on the first unreadable one
    (``policy`` "error"), or leave them all out ("skip"); returns the dataset and how many were left out."""
    from tqdm.auto import tqdm

    from .images import unreadable

    keep = []
    for i in tqdm(range(len(dataset)), desc=f"checking {dataset.name} images", leave=False, disable=None):
        where, data, _ = dataset.encoded(i)
        reason = "no image" if data is None else unreadable(where, dataset.short_side, data)
        if reason is None:
            keep.append(dataset.indices[i])
        elif policy == "error":
            raise DataError(f"{where} cannot be read ({reason}); pass {{bad_images}} skip to leave such images out", "bad_images")
    if len(keep) == len(dataset):
        return dataset, 0
    return dataset.only(keep), len(dataset) - len(keep)
