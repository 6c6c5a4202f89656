"""Cluttered images: one object at a random place on a larger canvas among pieces cut from other images.

The protocol of cluttered MNIST (Mnih et al., NeurIPS 2014; Ba et al., ICLR 2015; the spatial transformer paper's
test): a 28 px image placed fully inside a 60x60 canvas, plus ``pieces`` 8x8 patches cut from other images of the
same split at random places. Recognising the object needs all of it while ignoring pieces that look like parts of
objects, and since the object's place is known, a model's class evidence can be scored against the object's box.

Departure from the protocol: each clutter piece is the most inked of four random 8x8 cuts of its source image,
because a uniform cut of a Fashion-MNIST image is often the empty border and would add no clutter at all.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["CANVAS", "PIECE", "PIECES", "clutter"]

CANVAS = 60
PIECE = 8
PIECES = 4  # the protocol's count for 60x60 canvases


def _object_boxes(objects: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Tight boxes (N, 4: y0, x0, y1, x1, end exclusive) of each object's non-zero pixels on the canvas."""
    rows, cols = objects.any(axis=2), objects.any(axis=1)  # (N, h), (N, w)
    first = lambda m: m.argmax(axis=1)  # noqa: E731
    last = lambda m: m.shape[1] - m[:, ::-1].argmax(axis=1)  # noqa: E731
    box = np.stack([first(rows), first(cols), last(rows), last(cols)], axis=1)  # (N, 4) in the object's frame
    return box + np.concatenate([offsets, offsets], axis=1)


def clutter(images: np.ndarray, seed: int, canvas: int = CANVAS, pieces: int = PIECES,
            piece: int = PIECE) -> tuple[torch.Tensor, torch.Tensor]:
    """Canvases (N, 1, canvas, canvas) uint8 for ``images`` (N, h, w) uint8, and each object's box (N, 4) int64.

    Canvas ``i`` holds image ``i`` at a uniform place fully inside, and ``pieces`` patches of ``piece`` px from
    other images of ``images`` at uniform places; overlaps keep the brighter pixel. Everything about canvas ``i``
    is drawn from one generator seeded by ``seed``, so it depends only on ``seed``, ``i`` and ``images``.
    """
    n, h, w = images.shape
    if isinstance(pieces, bool) or not isinstance(pieces, int) or pieces < 0:
        raise ValueError(f"pieces must be an integer >= 0, got {pieces!r}")
    if canvas < max(h, w) or piece > min(h, w) or n < 2:
        raise ValueError(f"need at least two images no larger than the canvas ({canvas} px) and no smaller than a "
                         f"piece ({piece} px), got {n} of {h}x{w}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, n, h, w, canvas, pieces, piece]))
    offsets = np.stack([rng.integers(0, canvas - h + 1, n), rng.integers(0, canvas - w + 1, n)], axis=1)  # (N, 2)
    source = (np.arange(n)[:, None] + rng.integers(1, n, (n, pieces))) % n  # (N, P): never the object's own image
    cut_y = rng.integers(0, h - piece + 1, (n, pieces, 4))  # four candidate cuts per piece
    cut_x = rng.integers(0, w - piece + 1, (n, pieces, 4))
    place = rng.integers(0, canvas - piece + 1, (n, pieces, 2))
    steps = np.arange(piece)
    out = np.zeros((n, canvas, canvas), np.uint8)
    rows = np.arange(n)[:, None, None]
    out[rows, offsets[:, 0, None, None] + np.arange(h)[:, None], offsets[:, 1, None, None] + np.arange(w)[None, :]] = images
    boxes = torch.from_numpy(_object_boxes(images, offsets).astype(np.int64))  # (N, 4)
    if pieces == 0:
        return torch.from_numpy(out).unsqueeze(1), boxes
    patches = images[source[..., None, None, None], cut_y[..., None, None] + steps[:, None],
                     cut_x[..., None, None] + steps[None, :]]  # (N, P, 4, piece, piece)
    best = patches.reshape(n, pieces, 4, -1).sum(axis=-1, dtype=np.int64).argmax(axis=-1)  # (N, P)
    patches = np.take_along_axis(patches, best[..., None, None, None], axis=2)[:, :, 0]  # (N, P, piece, piece)
    for p in range(pieces):
        ys = place[:, p, 0, None, None] + steps[:, None]  # (N, piece, 1)
        xs = place[:, p, 1, None, None] + steps[None, :]  # (N, 1, piece)
        out[rows, ys, xs] = np.maximum(out[rows, ys, xs], patches[:, p])
    return torch.from_numpy(out).unsqueeze(1), boxes  # (N, 1, canvas, canvas), (N, 4)
