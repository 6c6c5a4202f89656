"""SCNet backbones for torchvision's segmentation models: DeepLabV3, FCN and LR-ASPP on a dilated trunk.

As torchvision's ``deeplabv3_resnet50``: the last stages are dilated instead of strided (``output_stride`` 8 or 16),
the head reads ``layer4`` and the optional auxiliary FCN head ``layer3``; the models return a dict with "out" (and
"aux") logits upsampled to the input's size, whatever it is (97 x 130 works). Norms are trained batch norm, as
torchvision's segmentation recipes; pass ``norm_layer=``/``frozen_stages=``/``norm_eval=`` for other conventions.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation import FCN, LRASPP, DeepLabV3
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from .models import create_model

__all__ = ["segmentation_backbone", "deeplabv3", "fcn", "lraspp"]


def segmentation_backbone(name: str, return_layers: dict[str, str], output_stride: int = 8, pretrained: bool = False,
                          **kwargs: Any) -> tuple[nn.Module, dict[str, int]]:
    """(a registered model's trunk returning ``return_layers`` as a dict, the channels of each returned name)."""
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16 for segmentation, got {output_stride!r}")
    model = create_model(name, pretrained=pretrained, output_stride=output_stride, **kwargs)
    channels = {info["module"]: info["num_chs"] for info in model.feature_info}
    return IntermediateLayerGetter(model, return_layers=return_layers), {out: channels[layer] for layer, out in return_layers.items()}


def _layers(aux_loss: bool) -> dict[str, str]:
    return {"layer4": "out", **({"layer3": "aux"} if aux_loss else {})}


def deeplabv3(name: str = "scnet50", num_classes: int = 21, output_stride: int = 8, aux_loss: bool = False,
              pretrained_backbone: bool = False, **kwargs: Any) -> DeepLabV3:
    """torchvision DeepLabV3 (ASPP head) on a dilated SCNet; ``aux_loss`` adds the FCN head on ``layer3``."""
    backbone, ch = segmentation_backbone(name, _layers(aux_loss), output_stride, pretrained_backbone, **kwargs)
    return DeepLabV3(backbone, DeepLabHead(ch["out"], num_classes), FCNHead(ch["aux"], num_classes) if aux_loss else None)


def fcn(name: str = "scnet50", num_classes: int = 21, output_stride: int = 8, aux_loss: bool = False,
        pretrained_backbone: bool = False, **kwargs: Any) -> FCN:
    """torchvision FCN on a dilated SCNet."""
    backbone, ch = segmentation_backbone(name, _layers(aux_loss), output_stride, pretrained_backbone, **kwargs)
    return FCN(backbone, FCNHead(ch["out"], num_classes), FCNHead(ch["aux"], num_classes) if aux_loss else None)


def lraspp(name: str = "scnet50", num_classes: int = 21, output_stride: int = 16, inter_channels: int = 128,
           pretrained_backbone: bool = False, **kwargs: Any) -> LRASPP:
    """torchvision LR-ASPP: its head mixes ``layer1`` (low level, stride 4) into ``layer4`` (high level)."""
    backbone, ch = segmentation_backbone(name, {"layer1": "low", "layer4": "high"}, output_stride, pretrained_backbone, **kwargs)
    return LRASPP(backbone, ch["low"], ch["high"], num_classes, inter_channels)
