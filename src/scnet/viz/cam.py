"""Grad-CAM (Selvaraju et al., 2017) through the ``grad-cam`` package, for any image classifier.

Grad-CAM weights a layer's feature maps by the spatially averaged gradient of one class score and keeps the
positive part: a coarse map of where that layer's evidence for the class lies. The paper's figure shows SCNet's
maps covering whole objects where ResNet's cover parts; these functions let a user look at their own models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

__all__ = ["CamResult", "cam_mask_overlap", "gradcam", "default_cam_layer"]


@dataclass
class CamResult:
    """``cams``: (N, H, W) float32 in [0, 1], one per image at the input's size; the class each explains and
    the model's probability for it."""

    cams: np.ndarray
    classes: list[int]
    probs: list[float]
    layer: str


def default_cam_layer(model: nn.Module) -> str:
    """The last stage (``layer4`` in ResNets), Grad-CAM's usual choice: the finest map that still sees the class."""
    children = [n for n, _ in model.named_children()]
    for name in ("layer4", "layer3", "stages", "features"):
        if name in children:
            return name
    raise ValueError(f"no default Grad-CAM layer for {type(model).__name__}; name one of: {', '.join(children)}")


def gradcam(model: nn.Module, images: torch.Tensor, layer: Optional[str] = None,
            classes: Union[None, int, Sequence[int]] = None) -> CamResult:
    """Grad-CAM maps of ``images`` (N, C, H, W, normalised as the model expects) at the submodule ``layer``.

    ``classes``: None explains each image's predicted class; an int explains that class for all images; a
    sequence gives one class per image. The model is put in eval mode (its norms must not change).
    """
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as e:
        raise ImportError("gradcam needs the grad-cam package: pip install 'scnet[viz]' (or pip install grad-cam)") from e

    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"gradcam expects a non-empty (N, C, H, W) batch, got shape {tuple(images.shape)}")
    layer = layer or default_cam_layer(model)
    modules = dict(model.named_modules())
    if layer not in modules or not layer:
        raise ValueError(f"{type(model).__name__} has no layer {layer!r}; top-level ones: {', '.join(n for n, _ in model.named_children())}")
    model.eval()
    with torch.no_grad():
        probs = model(images).float().softmax(dim=1)  # (N, classes)
    n, num_classes = probs.shape
    if classes is None:
        chosen = probs.argmax(dim=1).tolist()
    elif isinstance(classes, int):
        chosen = [classes] * n
    else:
        chosen = list(classes)
        if len(chosen) != n:
            raise ValueError(f"give one class per image: {n} images, {len(chosen)} classes")
    bad = [c for c in chosen if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"class {bad[0]} is out of range: the model has {num_classes} classes")
    with GradCAM(model=model, target_layers=[modules[layer]]) as cam:
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in chosen])  # (N, H, W) in [0, 1]
    return CamResult(cams=np.asarray(maps, dtype=np.float32), classes=chosen,
                     probs=[float(probs[i, c]) for i, c in enumerate(chosen)], layer=layer)


def cam_mask_overlap(cams: np.ndarray, masks: np.ndarray, level: float = 0.5) -> dict[str, np.ndarray]:
    """How a batch of CAMs (N, H, W) in [0, 1] relates to object masks (N, H, W, bool), per image.

    ``mass_on_object``: share of the map's total that falls on the object; ``object_covered``: share of the
    object's pixels where the map reaches ``level``; ``area``: share of the image where it does. "Covers the
    whole object" (the paper's reading of its CAM figure) means a high ``object_covered`` without a large
    ``area`` off the object.
    """
    cams = np.asarray(cams, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    if cams.shape != masks.shape or cams.ndim != 3:
        raise ValueError(f"cams and masks must both be (N, H, W), got {cams.shape} and {masks.shape}")
    if not masks.reshape(len(masks), -1).any(axis=1).all():
        raise ValueError("every mask needs at least one object pixel")
    hot = cams >= level
    total = cams.reshape(len(cams), -1).sum(axis=1)
    on = (cams * masks).reshape(len(cams), -1).sum(axis=1)
    return dict(mass_on_object=np.divide(on, total, out=np.zeros_like(on), where=total > 0),
                object_covered=(hot & masks).reshape(len(cams), -1).sum(axis=1) / masks.reshape(len(masks), -1).sum(axis=1),
                area=hot.reshape(len(cams), -1).mean(axis=1))
