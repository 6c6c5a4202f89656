"""Input checks shared by the layer and the backbones.

Why: a wrong input otherwise fails deep inside a convolution with a message about weights the user never
saw. These checks run once at a module boundary; they compile under TorchScript and ``torch.compile``.
The NaN/Inf check reads the whole input, so it is off unless ``set_finite_check(True)`` turns it on.
"""
from __future__ import annotations

from typing import Optional

import torch
from timm.layers import register_notrace_function

__all__ = ["check_image_batch", "set_finite_check"]

_FINITE = {"on": False}


def set_finite_check(enabled: bool) -> bool:
    """Make every model and SCConv refuse inputs holding NaN or infinity (off by default); returns the old setting."""
    previous = _FINITE["on"]
    _FINITE["on"] = bool(enabled)
    return previous


def _layout(dims: int) -> str:
    return "(N, C, L)" if dims == 1 else ("(N, C, H, W)" if dims == 2 else "(N, C, D, H, W)")


# Shape checks are Python control flow: FX tracing (timm/torchvision feature extraction) keeps them as a call.
@register_notrace_function
def check_image_batch(x: torch.Tensor, channels: int, owner: str, reference: Optional[torch.Tensor] = None, dims: int = 2) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``x`` is a non-empty floating (N, channels, H, W) tensor (with
    ``dims`` 1 or 3: (N, channels, L) or (N, channels, D, H, W)).

    With ``reference`` (one of the owner's weights), ``x`` must also be on its device and, outside autocast,
    of its dtype.
    """
    if x.dim() != dims + 2:
        raise ValueError(f"{owner} expects a {dims + 2}-D {_layout(dims)} tensor, got a {x.dim()}-D tensor of shape {list(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{owner} expects {channels} input channels, got {x.shape[1]} (input shape {list(x.shape)})")
    if not x.is_floating_point():
        raise TypeError(f"{owner} expects a floating-point tensor, got dtype {x.dtype}; convert it, e.g. x.float()")
    if x.numel() == 0:  # the channel count matched: some other side is 0
        raise ValueError(f"{owner} got an empty input of shape {list(x.shape)}")
    if not torch.jit.is_scripting():
        _check_eager(x, owner, reference)


@torch.jit.unused
def _check_eager(x: torch.Tensor, owner: str, reference: Optional[torch.Tensor]) -> None:
    if reference is not None:
        if x.device != reference.device:
            raise ValueError(f"{owner}'s weights are on {reference.device} but the input is on {x.device}; "
                             f"move one of them, e.g. model.to({str(x.device)!r})")
        if x.dtype != reference.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"{owner}'s weights are {reference.dtype} but the input is {x.dtype}; convert the input "
                            f"(x.to({reference.dtype})) or run under torch.autocast")
    if _FINITE["on"] and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{owner} got an input holding NaN or infinity (finite-input checks are on)")
