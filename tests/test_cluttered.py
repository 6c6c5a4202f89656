"""Cluttered images: the object whole inside its box, clutter cut from other images of the split, determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scnet.data import build_datasets
from scnet.data.cluttered import clutter


def _objects(n: int = 40) -> np.ndarray:
    """Distinct objects: image i is a filled rectangle of grey level 100 + i at its own place inside 28x28."""
    rng = np.random.default_rng(0)
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        y, x = rng.integers(0, 14, 2)
        images[i, y:y + 8 + i % 6, x:x + 10] = 100 + i
    return images


def test_the_object_lies_whole_in_its_tight_box_on_the_canvas() -> None:
    objects = _objects()
    canvases, boxes = clutter(objects, seed=0, pieces=0)  # without clutter: the canvas is the object alone
    assert canvases.shape == (40, 1, 60, 60) and canvases.dtype == torch.uint8 and boxes.dtype == torch.int64
    for i, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
        assert 0 <= y0 < y1 <= 60 and 0 <= x0 < x1 <= 60
        ys, xs = np.nonzero(objects[i])
        assert (y1 - y0, x1 - x0) == (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)  # tight
        crop = canvases[i, 0, y0:y1, x0:x1].numpy()
        assert np.array_equal(crop, objects[i][ys.min():ys.max() + 1, xs.min():xs.max() + 1])
        assert canvases[i].sum() == objects[i].sum()  # nothing else on the canvas


def test_clutter_comes_from_other_images_and_is_deterministic() -> None:
    objects = _objects()
    canvases, boxes = clutter(objects, seed=3)
    again, again_boxes = clutter(objects, seed=3)
    assert torch.equal(canvases, again) and torch.equal(boxes, again_boxes)
    assert not torch.equal(canvases, clutter(objects, seed=4)[0])
    for i in range(len(objects)):
        levels = set(np.unique(canvases[i].numpy())) - {0}
        own = 100 + i
        assert own in levels
        # No piece of the object's own image: its grey level appears no more often than in the object itself.
        assert (canvases[i].numpy() == own).sum() <= (objects[i] == own).sum()
        others = levels - {own}
        assert others and all(100 <= v < 140 for v in others)  # clutter: grey levels of other images only


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="no larger than the canvas"):
        clutter(np.zeros((4, 64, 64), np.uint8), seed=0)
    with pytest.raises(ValueError, match="at least two images"):
        clutter(np.zeros((1, 28, 28), np.uint8), seed=0)


@pytest.mark.slow
def test_cluttered_fashion_mnist_as_a_dataset() -> None:
    train, val, info = build_datasets("cluttered_fashion_mnist", limit_train=100, limit_val=50)
    fashion_train, fashion_val, _ = build_datasets("fashion_mnist", limit_train=100, limit_val=50)
    assert (info.num_classes, info.in_chans, info.image_size, len(train), len(val)) == (10, 1, 60, 100, 50)
    assert torch.equal(train.labels, fashion_train.labels) and torch.equal(val.labels, fashion_val.labels)
    assert train.boxes is None and val.boxes.shape == (50, 4)  # the tools that score localization read the test boxes
    # Each test canvas holds its own Fashion-MNIST test image inside the box (clutter may only add brighter pixels).
    for i in range(50):
        y0, x0, y1, x1 = val.boxes[i].tolist()
        obj = fashion_val.images[i, 0]
        ys, xs = torch.nonzero(obj, as_tuple=True)
        tight = obj[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert (val.images[i, 0, y0:y1, x0:x1] >= tight).all() and (y1 - y0, x1 - x0) == tuple(tight.shape)
