"""Datasets for the training tools, and the generated tasks (Pathfinder, cluttered Fashion-MNIST)."""
from .datasets import (BAD_IMAGE_POLICIES, DATASETS, FASHION_CLASSES, FASHION_MNIST_PAD, FASHION_MNIST_SYSTEM_DIR, BatchAugment,
                       DataError, DataInfo, IMAGENET_CROP_PCT, TensorImages, build_datasets, eval_transform)
from .pathfinder_gen import pathfinder
from .subsets import labels_of, nested_order, nested_subset

__all__ = ["BAD_IMAGE_POLICIES", "BatchAugment", "DataError", "DataInfo", "DATASETS", "FASHION_CLASSES", "FASHION_MNIST_PAD",
           "FASHION_MNIST_SYSTEM_DIR", "IMAGENET_CROP_PCT", "TensorImages", "build_datasets", "eval_transform", "labels_of", "nested_order", "nested_subset",
           "pathfinder"]
