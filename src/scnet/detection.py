"""SCNet backbones for torchvision's detectors: an FPN backbone and ready Faster/Mask R-CNN and RetinaNet builders.

The backbone keeps torchvision's conventions (``out_channels``, feature maps '0'..'3' plus 'pool', frozen
norms, the first ``5 - trainable_layers`` parts frozen), so any torchvision detection head accepts it.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch.nn as nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from .models import create_model

__all__ = ["fpn_backbone", "fasterrcnn", "maskrcnn", "retinanet"]

_TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


def fpn_backbone(
    name: str,
    pretrained: bool = False,
    trainable_layers: int = 3,
    norm_layer: Callable[[int], nn.Module] = FrozenBatchNorm2d,
    returned_layers: Optional[Sequence[int]] = None,
    extra_blocks: Optional[ExtraFPNBlock] = None,
    out_channels: int = 256,
    **model_kwargs: Any,
) -> BackboneWithFPN:
    """A registered scnet model as a torchvision FPN backbone.

    Args:
        name: any registered model (e.g. "scnet50", "scnet50_v1d", a plain twin for a baseline).
        pretrained: start from the official ImageNet weights.
        trainable_layers: how many of layer4, layer3, layer2, layer1, stem are trained (0-5), as torchvision.
        norm_layer: frozen batch norm by default, as torchvision's detection backbones.
        returned_layers: stages fed to the FPN (default 1-4).
        extra_blocks: extra FPN levels (default a max-pooled 'pool' level).
    """
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    returned_layers = list(returned_layers or (1, 2, 3, 4))
    if not returned_layers or any(i not in (1, 2, 3, 4) for i in returned_layers):
        raise ValueError(f"returned_layers must be a non-empty subset of 1..4, got {returned_layers}")
    backbone = create_model(name, pretrained=pretrained, norm_layer=norm_layer, **model_kwargs)
    trainable = _TRAINABLE_ORDER[:trainable_layers] + (("bn1",) if trainable_layers == 5 else ())
    for pname, param in backbone.named_parameters():
        if not pname.startswith(trainable):
            param.requires_grad_(False)
    channels = {info["module"]: info["num_chs"] for info in backbone.feature_info}
    return BackboneWithFPN(
        backbone,
        return_layers={f"layer{i}": str(k) for k, i in enumerate(returned_layers)},
        in_channels_list=[channels[f"layer{i}"] for i in returned_layers],
        out_channels=out_channels,
        extra_blocks=extra_blocks if extra_blocks is not None else LastLevelMaxPool(),
    )


def fasterrcnn(name: str = "scnet50", num_classes: int = 91, pretrained_backbone: bool = False, trainable_layers: int = 3, **kwargs: Any) -> FasterRCNN:
    """torchvision Faster R-CNN on an SCNet FPN backbone; ``kwargs`` go to ``FasterRCNN`` (e.g. min_size)."""
    return FasterRCNN(fpn_backbone(name, pretrained_backbone, trainable_layers), num_classes=num_classes, **kwargs)


def maskrcnn(name: str = "scnet50", num_classes: int = 91, pretrained_backbone: bool = False, trainable_layers: int = 3, **kwargs: Any) -> MaskRCNN:
    """torchvision Mask R-CNN on an SCNet FPN backbone."""
    return MaskRCNN(fpn_backbone(name, pretrained_backbone, trainable_layers), num_classes=num_classes, **kwargs)


def retinanet(name: str = "scnet50", num_classes: int = 91, pretrained_backbone: bool = False, trainable_layers: int = 3, **kwargs: Any) -> RetinaNet:
    """torchvision RetinaNet on an SCNet FPN backbone (P3-P5 plus P6/P7, as torchvision's RetinaNet)."""
    backbone = fpn_backbone(name, pretrained_backbone, trainable_layers, returned_layers=(2, 3, 4), extra_blocks=LastLevelP6P7(256, 256))
    return RetinaNet(backbone, num_classes=num_classes, **kwargs)
