"""scnet: self-calibrated convolutions (Liu et al., CVPR 2020) and the SCNet family."""
from .layers import SCConv, SCConv1d, SCConv3d, SafeBatchNorm2d, SelfCalibration, set_finite_check
from .models import (
    PRETRAINED, ResNet, WeightsUnavailableError, create_model, list_models, load_checkpoint, plain_twin,
)
from . import detection, segmentation
from .convert import ConversionReport, convert
from .fast import cuda_graph, deploy, fast_train
from .int8 import quantize
from .load import LoadedModel, load_model
from .profile import count_macs, count_params
from .version import __version__  # written in one place (version.py), which pyproject.toml reads

__all__ = [
    "ConversionReport", "LoadedModel", "PRETRAINED", "ResNet", "SCConv", "SCConv1d", "SCConv3d", "SafeBatchNorm2d", "SelfCalibration", "WeightsUnavailableError",
    "convert", "count_macs", "cuda_graph", "deploy", "fast_train", "detection", "segmentation", "count_params", "create_model", "list_models", "load_checkpoint", "load_model", "plain_twin", "quantize",
    "set_finite_check",
]
