"""The network as the ONNX engines fuse it: exact rewrites of an eval-mode model, made before it is exported.

Why: OpenVINO's CPU plugin and ONNX Runtime fuse a convolution with the ReLU after it and with an element-wise sum
whose other operand comes from another branch (a residual), but the reference SC bottleneck gives them a graph
that takes neither path where it could: K1's and the calibration's outputs are concatenated and then read by
``conv3``, and ``conv1_a``/``conv1_b`` read the same input as two convolutions. Each rewrite here computes the same
function (tested against the unrewritten export); ``export_onnx(..., rewrites=...)`` writes the form, and
``scripts/bench_rewrites.py`` measures each on both engines. Measured so far (docs/results/engines/rewrites, batch 8),
none pays, so ``export_onnx`` writes the model's own graph unless asked:

- ``merge_conv1``: ``conv1_a`` and ``conv1_b`` as one 1x1 convolution whose output is sliced into the two halves
  (the authors' own equivalence, as ``deploy`` does);
- ``split_conv3``: ``conv3(cat[a, b])`` as ``conv3_a(a) + conv3_b(b)``, the shortcut summed into the first and the
  block's ReLU after the second: two convolutions, each with its sum fused, and no concatenation. The avd pool of
  the v1d blocks is per channel, so it moves onto each half.

Both start from ``deploy``'s portable form (norms folded into the convolutions, which both engines do themselves
anyway), so the plain twin gets the same treatment where a rewrite applies to it (folding; it has no halves).
"""
# No ``from __future__ import annotations``: TorchScript reads the forms' annotations as real types.
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.blocks import SCBottleneck
from .deploy import deploy
from .fusion import FusedConv
from .inference import FusedSCBottleneck

__all__ = ["ONNX_REWRITES", "OnnxSCBottleneck", "onnx_form"]

ONNX_REWRITES = ("merge_conv1", "split_conv3")


def _rows(conv: FusedConv, start: int, stop: int) -> FusedConv:
    """Output channels ``start:stop`` of a 1x1 ``conv``, as a convolution of their own."""
    return FusedConv(conv.weight[start:stop].clone(), conv.bias[start:stop].clone(), relu=conv.relu, onednn=False)


def _columns(conv: FusedConv, start: int, stop: int, bias: bool, relu: bool) -> FusedConv:
    """``conv`` over input channels ``start:stop`` only (a 1x1 over part of a concatenation), its bias or none."""
    weight = conv.weight[:, start:stop].clone()
    return FusedConv(weight, conv.bias.clone() if bias else torch.zeros_like(conv.bias), relu=relu, onednn=False)


class OnnxSCBottleneck(FusedSCBottleneck):
    """``SCBottleneck`` in eval mode with the rewrites named in ``rewrites`` (norms folded in any case)."""

    def __init__(self, block: SCBottleneck, rewrites: Sequence[str] = ONNX_REWRITES) -> None:
        super().__init__(block, onednn=False)
        unknown = set(rewrites) - set(ONNX_REWRITES)
        if unknown:
            raise ValueError(f"unknown ONNX rewrites {sorted(unknown)}; choose from {ONNX_REWRITES}")
        merged, split = "merge_conv1" in rewrites, "split_conv3" in rewrites
        width = self.conv1.weight.shape[0]
        self.conv1_a = None if merged else _rows(self.conv1, 0, self.half)
        self.conv1_b = None if merged else _rows(self.conv1, self.half, width)
        relu = not self.has_se  # the ReLU after the residual sum, unless channel attention sits in between
        self.conv3_a = _columns(self.conv3, 0, self.half, bias=True, relu=False) if split else None
        self.conv3_b = _columns(self.conv3, self.half, width, bias=False, relu=relu) if split else None

    def _halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.conv1_a is not None and self.conv1_b is not None:
            return self.conv1_a(x), self.conv1_b(x)  # (N, w/2, H, W) each
        ab = self.conv1(x)  # (N, w, H, W): [a | b]
        return ab[:, :self.half], ab[:, self.half:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self._halves(x)
        a, b = self.k1(a), self.scconv(b)  # (N, w/2, H/s, W/s) each, ReLU applied
        if self.conv3_a is None or self.conv3_b is None:
            return self._tail(torch.cat([a, b], dim=1), x)
        a, b = self.avd_layer(a), self.avd_layer(b)  # per channel: the same as pooling the concatenation
        if self.has_se:
            return F.relu(self.se(self.conv3_b(b, self.conv3_a(a), "add")) + self._shortcut(x))
        return self.conv3_b(b, self.conv3_a(a, self._shortcut(x), "add"), "add")  # relu(conv3_a a + short + conv3_b b)


def onnx_form(model: nn.Module, rewrites: Sequence[str] = ONNX_REWRITES) -> nn.Module:
    """A copy of the eval-mode ``model`` to export: ``deploy``'s portable form (norms folded, stem fused) with every
    SC bottleneck ``deploy`` fused rewritten as ``rewrites`` say. The model is not modified; what ``deploy`` keeps as
    it was (a norm it cannot fold, a subclass written elsewhere) stays as it was here too."""
    form = deploy(model, channels_last=False, backend="portable")
    for name, kind in form.deploy_report.fused.items():
        if kind == FusedSCBottleneck.__name__:
            parent, _, child = name.rpartition(".")
            setattr(form.get_submodule(parent) if parent else form, child, OnnxSCBottleneck(model.get_submodule(name), rewrites))
    # Plain layout: weights stored channels_last would make the exporter write strided views (an as_strided
    # gather before the classifier) where the graph means a reshape.
    return form.to(memory_format=torch.contiguous_format)
