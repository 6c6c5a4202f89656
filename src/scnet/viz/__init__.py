"""Seeing the claim: Grad-CAM maps and effective receptive fields, an SC model beside its baseline.

Importing this package needs no plotting library; ``gradcam`` needs the ``grad-cam`` package, the figures
matplotlib.
"""
from .cam import CamResult, cam_mask_overlap, default_cam_layer, gradcam
from .erf import THRESHOLDS, FeatureMap, erf, erf_area_ratios, stage_names
from .localization import box_scores, localization

__all__ = ["CamResult", "FeatureMap", "box_scores", "cam_mask_overlap", "localization", "THRESHOLDS", "default_cam_layer", "erf", "erf_area_ratios", "gradcam", "stage_names"]
