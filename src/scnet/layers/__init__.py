"""Generic building blocks; nothing here knows about ResNets."""
from .norm import NormLayer, SafeBatchNorm2d, get_norm_layer, group_norm
from .scconv import UPSAMPLE_MODES, CalibrationPool, SCConv, SCConv1d, SCConv3d, SelfCalibration, conv3x3_norm
from .validate import check_image_batch, set_finite_check

__all__ = [
    "CalibrationPool", "NormLayer", "SCConv", "SCConv1d", "SCConv3d", "SafeBatchNorm2d", "SelfCalibration", "UPSAMPLE_MODES",
    "check_image_batch", "set_finite_check", "conv3x3_norm", "get_norm_layer", "group_norm",
]
