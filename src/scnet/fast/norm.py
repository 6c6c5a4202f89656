"""Batch norms of consecutive channel blocks as one call, for the training fast forms (``scnet.fast.training``)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from ..layers.norm import SafeBatchNorm2d, single_value_per_channel

__all__ = ["stackable_norms", "stacked_batch_norm", "stacked_batch_norm_again", "count_batch"]


def stackable_norms(*norms: nn.Module) -> bool:
    """Whether these norms, in training, can run as one batch norm over the concatenation of their inputs.

    Only plain training-mode batch norms with running statistics and a fixed momentum qualify, all with the
    same eps and momentum; anything else (SyncBatchNorm, GroupNorm, a norm frozen by ``norm_eval``) runs alone.
    """
    first = norms[0]
    return all(
        type(n) in (SafeBatchNorm2d, nn.BatchNorm2d) and n.training and n.affine and n.track_running_stats
        and n.momentum is not None and n.momentum == first.momentum and n.eps == first.eps
        for n in norms
    )


def stacked_batch_norm(x: torch.Tensor, norms: Sequence[nn.BatchNorm2d]) -> torch.Tensor:
    """Training-mode ``torch.cat([norm(part) for norm, part in ...], 1)`` for consecutive channel blocks of ``x``, as one call.

    Why: batch norm is per channel, so norms of consecutive channel blocks equal one norm over them all. On a
    CPU the half-width norms of an SC bottleneck cost more per value than a full-width one, and their inputs
    or gradients would be channel slices of a channels_last tensor, which batch norm's backward reads about
    three times slower than a contiguous tensor. Each norm's running statistics and batch count are updated
    on its own buffers, exactly as if it had run alone. The caller checks ``stackable_norms`` first.
    """
    return stacked_batch_norm_again(x, norms)[0]


def stacked_batch_norm_again(x: torch.Tensor, norms: Sequence[nn.BatchNorm2d]) -> tuple[torch.Tensor, Optional[Callable[[], torch.Tensor]]]:
    """``stacked_batch_norm``, and a function that computes its output again, bit for bit, without any graph.

    The function lets a caller recompute the output from ``x`` instead of keeping it (``layers/recompute.py``): it
    runs the same kernel on the same batch (the statistics come out the same; the running ones are not touched
    again). It is None where the single-value rule made each norm decide on its own.
    """
    sizes = [n.num_features for n in norms]
    if single_value_per_channel(x):  # SafeBatchNorm2d's single-value rule: each norm decides
        return torch.cat([n(part) for n, part in zip(norms, x.split(sizes, 1))], 1), None
    mean = torch.cat([n.running_mean for n in norms])  # (sum C_i,): updated in place by batch_norm
    var = torch.cat([n.running_var for n in norms])  # (sum C_i,)
    weight, bias = torch.cat([n.weight for n in norms]), torch.cat([n.bias for n in norms])
    momentum, eps = norms[0].momentum, norms[0].eps
    out = torch.native_batch_norm(x, weight, bias, mean, var, True, momentum, eps)[0]
    with torch.no_grad():
        for n, m, v in zip(norms, mean.split(sizes), var.split(sizes)):
            n.running_mean.copy_(m)
            n.running_var.copy_(v)
    count_batch(*norms)

    def again() -> torch.Tensor:
        with torch.no_grad():
            return torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)[0]  # (N, sum C_i, H, W)

    return out, again


def count_batch(*norms: nn.BatchNorm2d) -> None:
    """What a training-mode batch norm's module does besides the call: count the batch (``stackable_norms`` norms)."""
    with torch.no_grad():
        for n in norms:
            n.num_batches_tracked.add_(1)
