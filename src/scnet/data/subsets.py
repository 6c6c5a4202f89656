"""Training sets of any size drawn from one: seeded, stratified by class, and nested.

Why not the first N samples: a list sorted by class (an ImageFolder tree) gives a head of one class, and a model
trained on it learns to answer that class always. A learning curve also needs its sets *nested* (every smaller set
inside the larger ones), so that going from one size to the next only adds images and the curve measures the
value of more data, not of other data.

Both properties come from one seeded order of the whole set: item ``j`` (0-based, in a random order within its
class) of a class with ``m`` items is given the key ``(j + 1/2) / m``, and the set is sorted by key. The first
``n`` items of that order hold, from every class, the items whose key lies below some threshold, so each class
contributes its share ``n * m / total`` to within one image (the Sainte-Laguë / Webster apportionment, which never
takes an item back as ``n`` grows); ties between classes go by the random order.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..errors import SettingError

__all__ = ["labels_of", "nested_order", "nested_subset"]


def labels_of(dataset: Dataset) -> torch.Tensor:
    """The integer label of every sample, without reading an image: in-memory sets (``TensorImages``), torchvision's
    folders (``targets``) and ``Subset`` views of either."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    for name in ("labels", "targets"):
        labels = getattr(dataset, name, None)
        if labels is not None:
            return torch.as_tensor(labels, dtype=torch.long)
    raise TypeError(f"cannot read the labels of a {type(dataset).__name__} without its images (it has no labels or targets)")


def nested_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded order of all indices whose every prefix is a class-stratified random subset (see the module's text).

    Depends on the labels and ``seed`` only: every size drawn with one seed is a prefix of the same order.
    """
    labels_np = np.asarray(labels, dtype=np.int64)
    total = len(labels_np)
    shuffled = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).numpy()  # random order within each class
    classes = labels_np[shuffled]
    by_class = np.argsort(classes, kind="stable")  # positions grouped by class, the random order kept inside each group
    counts = np.bincount(classes) if total else np.zeros(0, dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])) if total else counts
    rank = np.empty(total, dtype=np.int64)
    rank[by_class] = np.arange(total) - starts[classes[by_class]]  # j: the item's place among its class's items
    key = (rank + 0.5) / counts[classes]
    return torch.from_numpy(shuffled[np.argsort(key, kind="stable")])  # ties: the random order


def nested_subset(dataset: Dataset, size: int, seed: int) -> Dataset:
    """``size`` samples of ``dataset``, the first ``size`` of ``nested_order`` (kept in the dataset's own order, so
    the whole set is the dataset itself). In-memory sets stay in memory (``TensorImages.take``), others become a
    ``Subset``. Raises ``SettingError`` when ``size`` is not between 1 and the set's length."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= len(dataset):
        raise SettingError(f"{{train_subset}} must be an integer from 1 to the {len(dataset):,} training images, got {size!r}",
                           "train_subset")
    chosen, _ = torch.sort(nested_order(labels_of(dataset), seed)[:size])
    take: Any = getattr(dataset, "take", None)
    return take(chosen) if take is not None else Subset(dataset, chosen.tolist())
