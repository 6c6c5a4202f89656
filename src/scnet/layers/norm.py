"""Normalisation layers and the one place where a norm given by name is resolved."""
from __future__ import annotations

import math
from typing import Callable, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

__all__ = ["SafeBatchNorm2d", "SafeBatchNorm1d", "SafeBatchNorm3d", "group_norm", "get_norm_layer", "NormLayer",
           "single_value_per_channel"]

NormLayer = Callable[[int], nn.Module]


def single_value_per_channel(x: torch.Tensor) -> bool:
    """Whether a batch holds one value per channel (N x spatial = 1), where batch statistics are undefined."""
    return x.numel() == x.shape[1]


class _SingleValueSafe:
    """The forward shared by the ``SafeBatchNorm`` classes (1-D, 2-D, 3-D): batch norm that also trains when a
    batch holds a single value per channel.

    Why: SC-Conv average-pools its calibration branch by ``r``; at 224 px the last stage's pooled map is
    1x1, so with batch size 1 the norm after K2 sees one value per channel and PyTorch's batch norm raises
    ("Expected more than 1 value per channel when training"). The official code cannot train with batch 1
    for that reason. Batch statistics of a single value are undefined, so in that one case the layer
    normalises with its running statistics (as in eval) and leaves them untouched. Every other case is
    PyTorch's batch norm exactly, with the same parameters, buffers and state-dict names.

    ``forward`` restates ``_BatchNorm.forward`` instead of calling ``super()`` because TorchScript does not
    compile ``super()`` calls.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)  # the subclass's rank (ValueError otherwise)
        # The shape test comes last so that eval-mode graphs (torch.export, ONNX) carry no guard on the size.
        if self.training and self.running_mean is not None and self.running_var is not None and single_value_per_channel(x):
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep_stats = not self.training or self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean if keep_stats else None,
            self.running_var if keep_stats else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )


# Each is PyTorch's batch norm of its dimension with ``_SingleValueSafe``'s forward (its ``_check_input_dim`` refuses
# inputs of another rank); shape-dependent branches: leaves for FX tracing.
@register_notrace_module
class SafeBatchNorm2d(_SingleValueSafe, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that also trains when a batch holds a single value per channel (see ``_SingleValueSafe``)."""


@register_notrace_module
class SafeBatchNorm1d(_SingleValueSafe, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over (N, C, L) that also trains with a single value per channel (``SCConv1d``'s norm)."""


@register_notrace_module
class SafeBatchNorm3d(_SingleValueSafe, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` that also trains with a single value per channel (``SCConv3d``'s norm)."""


def group_norm(num_channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``max_groups`` that divides ``num_channels``.

    Why: SC-Conv halves every width (a 64-wide stage has 32-wide branches, a small stem can be 16 wide), so a
    fixed 32 groups would not divide every layer.
    """
    return nn.GroupNorm(math.gcd(max_groups, num_channels), num_channels)


def _frozen_batch_norm(num_channels: int) -> nn.Module:
    from torchvision.ops import FrozenBatchNorm2d

    return FrozenBatchNorm2d(num_channels)


_NORMS: dict[str, NormLayer] = {
    "batchnorm": SafeBatchNorm2d,
    "groupnorm": group_norm,
    "frozenbn": _frozen_batch_norm,
}


_BATCH_NORMS = {1: SafeBatchNorm1d, 2: SafeBatchNorm2d, 3: SafeBatchNorm3d}


def get_norm_layer(norm_layer: Union[str, NormLayer, None], dims: int = 2) -> NormLayer | None:
    """Resolve ``norm_layer`` once, at the top of a constructor: a name, a class/callable, or None.

    ``dims``: the spatial dimensions of the layer's input; "batchnorm" is the 1-D, 2-D or 3-D batch norm, and
    "frozenbn" exists in 2-D only.
    """
    if norm_layer is None or callable(norm_layer):
        return norm_layer
    if isinstance(norm_layer, str):
        key = norm_layer.lower().replace("_", "").replace("-", "")
        if key == "batchnorm":
            return _BATCH_NORMS[dims]
        if key == "frozenbn" and dims != 2:
            raise ValueError(f"norm_layer 'frozenbn' exists for 2-D inputs only, not {dims}-D")
        if key in _NORMS:
            return _NORMS[key]
        raise ValueError(f"unknown norm_layer {norm_layer!r}; choose one of {sorted(_NORMS)} or pass a callable")
    raise TypeError(f"norm_layer must be a name, a callable or None, got {type(norm_layer).__name__}")
