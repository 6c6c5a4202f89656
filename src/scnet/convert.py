"""Drop-in conversion: replace a model's 3x3 convolutions by SC-Conv, with a report of what changed.

The paper's promise is that SC-Conv improves a backbone "with no need to change network architectures";
``convert`` makes that one call for models users already have (torchvision/timm ResNet, ResNeXt,
Wide-ResNet by default; any ``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d`` a predicate selects, as ``SCConv1d``/``SCConv``/
``SCConv3d``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch.nn as nn

from .layers import SCConv
from .layers.scconv import SC_LAYERS
from .layers.norm import NormLayer, SafeBatchNorm2d
from .profile import count_macs

__all__ = ["convert", "ConversionReport", "default_targets"]

Predicate = Callable[[str, nn.Module], bool]
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)  # dims 1, 2, 3: what SCConv(dims=...) replaces


@dataclass
class ConversionReport:
    """What ``convert`` did: converted layers, skipped layers with the reason, and the cost before/after."""

    converted: list[tuple[str, str]] = field(default_factory=list)  # (name, "in->out, stride s, ...")
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    conv_params_before: int = 0
    conv_params_after: int = 0
    macs_before: Optional[int] = None
    macs_after: Optional[int] = None

    def __str__(self) -> str:
        lines = [f"converted {len(self.converted)} convolution(s) to SCConv:"]
        lines += [f"  {name}: {desc}" for name, desc in self.converted]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            lines += [f"  {name}: {reason}" for name, reason in self.skipped]
        lines.append(f"conv parameters: {self.conv_params_before:,} -> {self.conv_params_after:,}")
        if self.macs_before is not None and self.macs_after is not None:
            lines.append(f"multiply-adds: {self.macs_before / 1e9:.3f} G -> {self.macs_after / 1e9:.3f} G")
        return "\n".join(lines)


def _block_types() -> tuple[tuple[type, tuple[str, ...]], ...]:
    """(block class, names of its 3x3 convs) for torchvision's and timm's residual blocks."""
    import timm.models.resnet as timm_resnet
    import torchvision.models.resnet as tv_resnet

    return (
        (tv_resnet.BasicBlock, ("conv1", "conv2")),
        (tv_resnet.Bottleneck, ("conv2",)),
        (timm_resnet.BasicBlock, ("conv1", "conv2")),
        (timm_resnet.Bottleneck, ("conv2",)),
    )


def default_targets(model: nn.Module) -> set[str]:
    """Names of the 3x3 convolutions inside torchvision/timm ResNet-family blocks."""
    targets = set()
    for block_name, block in model.named_modules():
        for block_type, conv_names in _block_types():
            if isinstance(block, block_type):
                targets.update(f"{block_name}.{c}" if block_name else c for c in conv_names if isinstance(getattr(block, c, None), nn.Conv2d))
    return targets


def _ineligible(conv: nn.Module) -> Optional[str]:
    """Why ``conv`` cannot become an SCConv (of its dimension), or None."""
    if conv.kernel_size != (3,) * len(conv.kernel_size):
        return f"kernel {'x'.join(map(str, conv.kernel_size))}, SC-Conv replaces convolutions of kernel 3"
    if conv.groups > 1 and conv.groups == conv.in_channels:
        return "depthwise convolution (no cross-channel filters to split)"
    if conv.in_channels % 2 or conv.out_channels % 2:
        return f"odd channel count ({conv.in_channels}->{conv.out_channels}); SC-Conv splits channels in halves"
    if (conv.in_channels // 2) % conv.groups or (conv.out_channels // 2) % conv.groups:
        return f"groups={conv.groups} does not divide the half widths {conv.in_channels // 2}/{conv.out_channels // 2}"
    if conv.padding_mode != "zeros" or conv.padding != conv.dilation or len(set(conv.stride)) > 1 or len(set(conv.dilation)) > 1:
        return f"padding {conv.padding} ({conv.padding_mode}), stride {conv.stride}, dilation {conv.dilation}: only 'same'-style zero padding with square stride/dilation is supported"
    return None


def _conv_params(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, _CONVS) for p in m.parameters(recurse=False))


def convert(
    model: nn.Module,
    predicate: Optional[Predicate] = None,
    input_size: Optional[Sequence[int]] = (3, 224, 224),
    pooling_r: int = 4,
    norm_layer: Optional[NormLayer] = SafeBatchNorm2d,
    upsample_mode: str = "nearest",
) -> ConversionReport:
    """Replace eligible 3x3 convolutions of ``model`` (in place) by ``SCConv`` with the same widths and geometry.

    Args:
        predicate: ``(name, conv) -> bool`` choosing ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d`` layers (each becomes
            the SC layer of its dimension). Without it, the 3x3s of torchvision's and timm's BasicBlock/Bottleneck
            are converted and any that cannot be are listed as skipped; with it, a chosen layer that cannot be
            converted is an error.
        input_size: (C, H, W) for the multiply-add count in the report ((C, L) or (C, D, H, W) for 1-D/3-D
            models), or None to skip counting.
        pooling_r: passed to every ``SCConv``.
        norm_layer: passed to every ``SCConv``.
        upsample_mode: passed to every ``SCConv``.

    The new layers start from SCConv's own initialisation (the 3x3 weights cannot carry over), so a converted
    pretrained model needs fine-tuning. Raises ``ValueError`` when nothing is eligible.
    """
    inside_sc = {f"{n}.{c}" for n, m in model.named_modules() if isinstance(m, SCConv) for c, _ in m.named_modules() if c}
    convs = {n: m for n, m in model.named_modules() if isinstance(m, _CONVS) and n not in inside_sc}
    chosen = [n for n, m in convs.items() if predicate(n, m)] if predicate else sorted(default_targets(model) & set(convs))
    report = ConversionReport(conv_params_before=_conv_params(model))
    reasons = {n: _ineligible(convs[n]) for n in chosen}
    report.skipped = [(n, why) for n, why in reasons.items() if why]
    if predicate is not None and report.skipped:
        raise ValueError("cannot convert the selected layers: " + "; ".join(f"{n}: {why}" for n, why in report.skipped))
    eligible = [n for n, why in reasons.items() if why is None]
    if not eligible:
        reasons = f" ({'; '.join(f'{n}: {w}' for n, w in report.skipped[:3])})" if report.skipped else ""
        where = "selected by the predicate" if predicate else "in torchvision/timm ResNet blocks; pass predicate= to choose layers"
        raise ValueError(f"{type(model).__name__} has no convertible 3x3 convolution {where}{reasons}")
    if input_size is not None:
        report.macs_before = count_macs(model, input_size)
    for name in eligible:
        conv = convs[name]
        sc = SC_LAYERS[len(conv.kernel_size)](
            conv.in_channels, conv.out_channels, stride=conv.stride[0], dilation=conv.dilation[0], groups=conv.groups,
            pooling_r=pooling_r, norm_layer=norm_layer, upsample_mode=upsample_mode,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        sc.train(conv.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, sc)
        report.converted.append((name, f"{conv.in_channels}->{conv.out_channels}, stride {conv.stride[0]}, dilation {conv.dilation[0]}, groups {conv.groups}"))
    report.conv_params_after = _conv_params(model)
    if input_size is not None:
        report.macs_after = count_macs(model, input_size)
    return report
