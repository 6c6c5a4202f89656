"""``predict``: top-k classes for image files, from a training checkpoint or an ImageNet model.

A training checkpoint carries its dataset's description (classes, channels, input size, mean/std), so the
images are prepared as its validation images were (resize, centre crop, mean/std). Any image mode is accepted:
grayscale, RGB, palette, RGBA (the alpha channel is dropped) and 16-bit images become the model's channels, as in
training (``scnet.data.images.open_image``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from .models.spec import ModelSpec
from .errors import SettingError

__all__ = ["load_image", "load_predictor", "predict"]

def load_image(path: str | Path, info: ModelSpec) -> torch.Tensor:
    """One image file as a normalised (C, S, S) tensor, prepared by the spec's ``transform`` (short side to
    S / crop_pct, centre crop, mean/std), as the model's own evaluation prepares one."""
    from .data.images import open_image

    img = open_image(path, info.in_chans, short_side=info.resize_side)  # bounded: checked before decoding or resizing
    return info.transform()(img)  # (C, S, S): exactly as the model's evaluation prepares an image


def load_predictor(checkpoint: Optional[str] = None, model: Optional[str] = None, pretrained: bool = False,
                   weights: Optional[str] = None, use_ema: bool = False) -> tuple[nn.Module, ModelSpec]:
    """A model in eval mode and the description of its inputs and classes (``scnet.load.load_model``)."""
    from .load import load_model

    if not (checkpoint or model):
        raise SettingError("give {checkpoint} (a training checkpoint) or {model} NAME (ImageNet classes)", "checkpoint", "model")
    loaded = load_model(model, checkpoint or weights, pretrained=pretrained, use_ema=use_ema)
    return loaded.model, loaded.info


def predict(model: nn.Module, info: ModelSpec, images: Sequence[str | Path], topk: int = 3, batch_size: int = 32) -> list[dict[str, Any]]:
    """For each image: its path and the ``topk`` (class, probability) pairs, most likely first."""
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    k = min(topk, info.num_classes)
    results = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        x = torch.stack([load_image(p, info) for p in chunk])  # (B, C, S, S)
        with torch.inference_mode():
            probs = model(x).float().softmax(dim=1)
        broken = (~torch.isfinite(probs).all(dim=1)).nonzero().flatten().tolist()
        if broken:  # never a "nan%" result: the weights (or the input) are broken
            raise ValueError(f"the model's outputs for {chunk[broken[0]]} are not finite (NaN or infinity): its weights are "
                             f"broken; use an earlier checkpoint")
        top = probs.topk(k, dim=1)
        for path, values, indices in zip(chunk, top.values.tolist(), top.indices.tolist()):
            results.append(dict(image=str(path), top=[dict(label=info.classes[i], index=i, prob=v) for v, i in zip(values, indices)]))
    return results
