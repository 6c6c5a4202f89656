"""Input checks shared by the layer and the backbones.

Why: a wrong input otherwise fails deep inside a convolution with a message about weights the user never
saw. These checks run once at a module boundary; they compile under TorchScript and ``torch.compile``.
"""
from __future__ import annotations

import torch
from timm.layers import register_notrace_function

__all__ = ["check_image_batch"]


# Shape checks are Python control flow: FX tracing (timm/torchvision feature extraction) keeps them as a call.
@register_notrace_function
def check_image_batch(x: torch.Tensor, channels: int, owner: str) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``x`` is a floating (N, channels, H, W) tensor."""
    if x.dim() != 4:
        raise ValueError(f"{owner} expects a 4-D (N, C, H, W) tensor, got a {x.dim()}-D tensor of shape {list(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{owner} expects {channels} input channels, got {x.shape[1]} (input shape {list(x.shape)})")
    if not x.is_floating_point():
        raise TypeError(f"{owner} expects a floating-point tensor, got dtype {x.dtype}; convert it, e.g. x.float()")
