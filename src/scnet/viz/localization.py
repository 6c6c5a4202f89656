"""Localization, measured: does a classifier's class evidence lie on the object?

The paper's CAM figure shows SCNet's Grad-CAM covering whole objects; a picture shows, a score measures. Given
each test image's object box, two standard scores of the Grad-CAM of the true class:

- the pointing game (Zhang et al., ECCV 2016): a hit when the map's maximum lies inside the box (no tolerance
  margin: at 60 px the original 15 px margin would be a quarter of the image);
- the energy-based pointing game (Wang et al., Score-CAM, CVPRW 2020): the share of the map's positive mass that
  lies inside the box.

A map with no positive evidence at all (all zeros) scores a miss and an energy share of 0.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

__all__ = ["box_scores", "localization"]


def box_scores(cams: np.ndarray, boxes: np.ndarray) -> dict[str, np.ndarray]:
    """Per image, for maps ``cams`` (N, H, W) >= 0 and boxes (N, 4: y0, x0, y1, x1, end exclusive): ``pointing``
    (N,) bool, the maximum inside the box; ``energy`` (N,) float, the share of the map's sum inside the box."""
    cams, boxes = np.asarray(cams, dtype=np.float64), np.asarray(boxes)
    if cams.ndim != 3 or boxes.shape != (len(cams), 4):
        raise ValueError(f"box_scores needs cams (N, H, W) and boxes (N, 4), got {cams.shape} and {boxes.shape}")
    if (cams < 0).any():
        raise ValueError("box_scores needs maps without negative values (Grad-CAM's are rectified)")
    n, h, w = cams.shape
    rows, cols = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    inside = ((rows >= boxes[:, 0, None, None]) & (rows < boxes[:, 2, None, None])
              & (cols >= boxes[:, 1, None, None]) & (cols < boxes[:, 3, None, None]))  # (N, H, W)
    peak = cams.reshape(n, -1).argmax(axis=1)
    total = cams.reshape(n, -1).sum(axis=1)
    hit = inside.reshape(n, -1)[np.arange(n), peak] & (total > 0)
    on = (cams * inside).reshape(n, -1).sum(axis=1)
    return dict(pointing=hit, energy=np.divide(on, total, out=np.zeros_like(on), where=total > 0))


def localization(model: nn.Module, dataset: Any, layer: Optional[str] = None, batch_size: int = 250,
                 progress: bool = False) -> dict[str, Any]:
    """Pointing-game hit rate and mean energy share (both in %) of the Grad-CAM of each image's true class over a
    dataset that knows its objects' boxes (``TensorImages`` with ``boxes``), and the per-image values.

    ``layer``: the Grad-CAM layer (default: the last stage, ``gradcam``'s choice).
    """
    from tqdm.auto import tqdm

    from .cam import gradcam

    boxes = getattr(dataset, "boxes", None)
    if boxes is None:
        raise ValueError(f"localization needs a dataset with object boxes (e.g. cluttered_fashion_mnist's test set), "
                         f"got {type(dataset).__name__} without them")
    device = next(model.parameters()).device
    pointing, energy = [], []
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc="Grad-CAM localization", disable=not progress or None, leave=False):
        index = torch.arange(start, min(start + batch_size, len(dataset)))
        images, labels = dataset.batch(index)
        cams = gradcam(model, images.to(device), layer, labels.tolist()).cams  # (B, H, W)
        scores = box_scores(cams, boxes[index].numpy())
        pointing.append(scores["pointing"])
        energy.append(scores["energy"])
    pointing, energy = np.concatenate(pointing), np.concatenate(energy)
    return dict(pointing=100.0 * float(pointing.mean()), energy_in_box=100.0 * float(energy.mean()), images=len(pointing),
                per_image=dict(pointing=pointing, energy=energy))
