"""The training forms: the reference modules with the same numbers computed in fewer passes and less memory.

``fast_train(model)`` swaps them in; ``fast_train(model, enable=False)`` swaps the reference forms back. A fast form
is a subclass of its reference class that adds no state and changes only how ``forward`` computes in training
mode, so the swap is a change of class: parameters, buffers, hooks, state-dict names and an optimizer's references
stay exactly as they were, and in eval mode (or wherever a fast path does not apply) the reference forward runs.

What they do, each tested equal to the reference (outputs, gradients, running statistics):

- ``FastSelfCalibration``: after a plain training batch norm, K3's norm, the gate and K4's convolution run as one
  autograd function that keeps only K3's raw output for backward (``gate.lean_calibrated_conv``); with any other
  norm the gate product keeps no full-size gate (``gate.calibrated_product``). On a GPU the gate is a Triton kernel.
- ``FastSCBottleneck``: the two half-width 1x1s as one convolution over their stacked weights with one norm; K1's
  and K4's norms as one norm over the concatenation (``norm.stacked_batch_norm``); the 1x1's normalised output
  recomputed in backward instead of kept (``recompute.recomputed``); the residual sum in place.
- ``FastBottleneck``: the plain twin with the residual sum in place (as torchvision's blocks), so twins compare fairly.

These forms are for eager training (and ``torch.compile``); TorchScript and FX tracing see the reference forms
(``fast_train(model, enable=False)``, or build the model again from its checkpoint).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from ..layers.scconv import SelfCalibration
from ..models.blocks import Bottleneck, SCBottleneck
from .fusion import running_eagerly
from .gate import calibrated_product, lean_calibrated_conv
from .norm import count_batch, stackable_norms, stacked_batch_norm, stacked_batch_norm_again
from .recompute import can_recompute, recomputed

__all__ = ["FastSelfCalibration", "FastSCBottleneck", "FastBottleneck", "fast_train", "calibrated_conv", "FAST_FORMS"]


def _trains_lean(sc: SelfCalibration, x: torch.Tensor) -> bool:
    """The lean path needs a plain training batch norm after K3 that sees more than one value per channel."""
    if is_fx_symbolic_tracing():
        return False
    if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
        return False  # under autocast the plain ops choose each one's precision
    k4_conv = sc.k4[0]  # its weight and geometry are read directly
    return (stackable_norms(sc.k3[1]) and type(k4_conv) is nn.Conv2d and k4_conv.bias is None and k4_conv.padding_mode == "zeros"
            and x.dim() == 4 and x.shape[0] * x.shape[-2] * x.shape[-1] > 1)


def calibrated_conv(sc: SelfCalibration, x: torch.Tensor) -> torch.Tensor:
    """K4's convolution of ``K3(x) * gate``, before K4's norm, in training: memory-lean where it applies.

    The SC bottleneck's fast form calls this for its calibrated half and runs K4's norm together with K1's.
    """
    if sc.training and _trains_lean(sc, x):
        k3_conv, k3_norm = sc.k3[0], sc.k3[1]
        count_batch(k3_norm)
        r = sc.k2[0].pooling_r if running_eagerly() else 0
        return lean_calibrated_conv(k3_conv(x), x, sc.k2(x), k3_norm, sc.k4[0], sc.upsample_mode, r)  # (N, C_out, H/s, W/s)
    return sc.k4[0](calibrated_product(sc.k3(x), x, sc.k2(x), sc.upsample_mode))  # (N, C_out, H/s, W/s)


class FastSelfCalibration(SelfCalibration):
    """``SelfCalibration`` whose training forward keeps less for backward (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        return self.k4[1](calibrated_conv(self, x))  # (N, C_out, H/s, W/s)


class _InPlaceSum(nn.Module):
    """The bottlenecks' merge with the residual sum in place in training: no fresh full-size tensor per block.
    (Eval keeps the reference's out-of-place sum, which the ONNX exporter needs.)"""

    def _merge(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super()._merge(out, x)
        out = self.drop_path(self.se(self.bn3(self.conv3(out))))
        out += x if self.downsample is None else self.downsample(x)
        return self.act(out)


class FastSCBottleneck(_InPlaceSum, SCBottleneck):
    """``SCBottleneck`` whose training forward runs the same numbers in fewer, wider calls (module docstring).

    On a CPU, channels_last, half-width norms cost more per value, and the concatenation's backward would hand K1's
    and K4's norms channel-slice gradients, which batch norm's backward reads slowly; stacking them, with the lean
    calibration, is most of what brings SCNet-50's training step near ResNet-50's (docs/results/train-cpu-gap).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self._trains_stacked():
            return self._forward_stacked(x)
        return super().forward(x)

    def _trains_stacked(self) -> bool:
        if is_fx_symbolic_tracing():  # FX cannot trace through the norms' Python
            return False
        plain_1x1s = type(self.conv1_a) is nn.Conv2d and type(self.conv1_b) is nn.Conv2d  # their weights are stacked
        return plain_1x1s and stackable_norms(self.bn1_a, self.bn1_b) and stackable_norms(self.k1[1], self.scconv.k4[1])

    def _forward_stacked(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.cat([self.conv1_a.weight, self.conv1_b.weight])  # (w, in, 1, 1)
        y = F.conv2d(x, weight)  # (N, w, H, W)
        z, again = stacked_batch_norm_again(y, [self.bn1_a, self.bn1_b])
        with self._recomputed_1x1(z, again):
            ab = self.act(z)  # (N, w, H, W)
            a, b = ab.split(ab.shape[1] // 2, dim=1)  # (N, w/2, H, W) each
            out = torch.cat([self.k1[0](a), calibrated_conv(self.scconv, b)], dim=1)  # (N, w, H/s, W/s)
        out = self.act(stacked_batch_norm(out, [self.k1[1], self.scconv.k4[1]]))
        return self._merge(self.avd_layer(out), x)  # avd: (N, w, H/s, W/s)

    def _recomputed_1x1(self, z: torch.Tensor, again: Optional[Callable[[], torch.Tensor]]) -> contextlib.AbstractContextManager:
        """The scope in which ``relu(z)``, the normalised 1x1 output, is recomputed bit for bit in backward instead of
        kept (``recompute.py``): one map of the 3x3 width less per block, one norm pass more."""
        if again is None or type(self.act) is not nn.ReLU or not can_recompute():
            return contextlib.nullcontext()
        return recomputed(z, lambda: again().clamp_min_(0))  # (N, w, H, W)


class FastBottleneck(_InPlaceSum, Bottleneck):
    """The plain ``Bottleneck`` with the residual sum in place in training, as the SC block's fast form has it."""


FAST_FORMS = {SelfCalibration: FastSelfCalibration, SCBottleneck: FastSCBottleneck, Bottleneck: FastBottleneck}


def fast_train(model: nn.Module, enable: bool = True) -> nn.Module:
    """Swap the training fast forms into ``model`` in place (``enable=False``: the reference forms back); returns it.

    Only modules of exactly a reference class are swapped (a subclass of ours may have its own forward), anywhere in
    the model: an SCNet, its plain twin, or any model holding ``SCConv`` layers (e.g. a converted torchvision ResNet).
    Raises ``TypeError`` for anything but an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fast_train expects an nn.Module, got {type(model).__name__}")
    swaps = FAST_FORMS if enable else {fast: ref for ref, fast in FAST_FORMS.items()}
    for module in model.modules():
        form = swaps.get(type(module))
        if form is not None:
            module.__class__ = form
    return model
