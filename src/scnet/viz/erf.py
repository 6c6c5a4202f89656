"""Effective receptive fields (Luo et al., NeurIPS 2016): how much each input pixel moves one output unit.

For a module that maps an image to a feature map, the ERF is the magnitude of the gradient of the feature
map's centre unit (summed over channels) with respect to the input, summed over input channels and averaged
over many inputs. Unlike the theoretical receptive field (every pixel a path reaches), it shows where the
influence actually concentrates, which is what the paper's "enlarged field of view" claims to change.

The summary numbers are RepLKNet's high-contribution area ratios: the smallest centred square that holds
20/30/50/99% of the total, as a fraction of the image.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

__all__ = ["erf", "erf_area_ratios", "FeatureMap", "stage_names", "THRESHOLDS"]

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


class _Stop(Exception):
    """Raised by the hook once the wanted feature map exists: the rest of the network need not run."""


class FeatureMap(nn.Module):
    """The output of one named submodule of ``model`` (e.g. ``layer2``) as a module of its own.

    Why a hook instead of rebuilding the network up to that layer: it works the same for our models,
    torchvision's and timm's, and gradients flow through the captured tensor as through the model.
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        names = dict(model.named_modules())
        if layer not in names or not layer:
            raise ValueError(f"{type(model).__name__} has no submodule {layer!r}; top-level ones: "
                             f"{', '.join(n for n, _ in model.named_children())}")
        self.model, self.layer = model, layer
        self._target = names[layer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def hook(module: nn.Module, args, output: torch.Tensor) -> None:
            captured.append(output)
            raise _Stop

        handle = self._target.register_forward_hook(hook)
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ValueError(f"{self.layer} did not run when the model was called")
        return captured[0]


def stage_names(model: nn.Module) -> list[str]:
    """The ResNet-style stages (``layer1``..``layer4``) a model has, in order."""
    names = [n for n, _ in model.named_children() if n in ("layer1", "layer2", "layer3", "layer4")]
    if not names:
        raise ValueError(f"{type(model).__name__} has no layer1..layer4 stages; name the layers to measure")
    return names


def erf(
    model: nn.Module, input_size: Sequence[int] = (3, 224, 224), num_samples: int = 32,
    inputs: Optional[Iterable[torch.Tensor]] = None, seed: int = 0, batch_size: int = 8,
) -> np.ndarray:
    """The effective receptive field of ``model``'s centre output unit: an (H, W) array (float64, >= 0).

    ``model`` maps (N, C, H, W) images to (N, K, h, w) feature maps (wrap a classifier's stage in
    ``FeatureMap``). The inputs are ``inputs`` (image tensors of ``input_size``, e.g. a dataset's) or, when
    None, ``num_samples`` standard-normal images. The model is used as it is (call ``eval()`` first for the
    running statistics of a trained model). Raises ``ValueError`` when the output is not a feature map or does
    not depend on the input at all.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if len(input_size) != 3 or min(input_size) < 1:
        raise ValueError(f"input_size must be (C, H, W) with positive sides, got {tuple(input_size)}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    total = torch.zeros(tuple(input_size)[1:], dtype=torch.float64)
    seen = 0
    for batch in _batches(inputs, input_size, num_samples, seed, batch_size):
        x = batch.to(device=device, dtype=param.dtype if param is not None else torch.float32).requires_grad_(True)
        out = model(x)
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"erf needs a module mapping images to feature maps (N, K, h, w); it returned {shape}")
        h, w = out.shape[-2:]
        centre = out[:, :, h // 2, w // 2].sum()  # one unit per image, all channels
        grad = torch.autograd.grad(centre, x, allow_unused=True)[0] if centre.requires_grad else None
        if grad is None:  # no path from the input to the output at all
            raise ValueError("the feature map does not depend on the input: no receptive field to measure")
        total += grad.detach().abs().sum(dim=1).sum(dim=0).double().cpu()  # (H, W)
        seen += x.shape[0]
    if seen == 0:
        raise ValueError("no input images were given")
    if not torch.isfinite(total).all():
        raise ValueError("the gradients are not finite: the model's outputs overflow for these inputs")
    if total.sum() == 0:
        raise ValueError("the feature map does not depend on the input (every gradient is zero): "
                         "nothing to measure; check the layer and that the model is not constant")
    return (total / seen).numpy()


def _batches(inputs: Optional[Iterable[torch.Tensor]], input_size: Sequence[int], num_samples: int, seed: int, batch_size: int):
    """Batches of at most ``batch_size`` images: the given ones (up to ``num_samples``) or seeded noise."""
    if inputs is None:
        gen = torch.Generator().manual_seed(seed)
        for start in range(0, num_samples, batch_size):
            yield torch.randn(min(batch_size, num_samples - start), *input_size, generator=gen)
        return
    pending: list[torch.Tensor] = []
    taken = 0
    for item in inputs:
        images = item if item.dim() == 4 else item.unsqueeze(0)
        for image in images:
            if tuple(image.shape) != tuple(input_size):
                raise ValueError(f"erf inputs must be {tuple(input_size)}, got {tuple(image.shape)}")
            pending.append(image)
            taken += 1
            if len(pending) == batch_size or taken == num_samples:
                yield torch.stack(pending)
                pending = []
            if taken == num_samples:
                return
    if pending:
        yield torch.stack(pending)


def erf_area_ratios(erf_map: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> dict[str, dict[str, float]]:
    """For each threshold t: the side of the smallest square centred on the map's centre pixel that holds a
    fraction t of the total, and its area as a fraction of the map (both clipped at the borders)."""
    data = np.asarray(erf_map, dtype=np.float64)
    if data.ndim != 2 or data.sum() <= 0:
        raise ValueError("erf_area_ratios needs a non-zero (H, W) map")
    h, w = data.shape
    cy, cx = h // 2, w // 2
    total = data.sum()
    # Cumulative mass of centred squares of half-width r = 0, 1, ... until the square covers the whole map.
    radii = range(0, max(cy, h - 1 - cy, cx, w - 1 - cx) + 1)
    masses, areas, sides = [], [], []
    for r in radii:
        window = data[max(0, cy - r):cy + r + 1, max(0, cx - r):cx + r + 1]
        masses.append(window.sum() / total)
        areas.append(window.size / data.size)
        sides.append(max(window.shape))  # 2r + 1 until the square meets the border
    out = {}
    for t in thresholds:
        if not 0 < t <= 1:
            raise ValueError(f"thresholds must be in (0, 1], got {t}")
        r = next(i for i, m in enumerate(masses) if m >= t - 1e-12)
        out[f"{round(100 * t)}%"] = dict(side=sides[r], area_ratio=areas[r])
    return out
