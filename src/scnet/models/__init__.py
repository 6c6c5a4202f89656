"""Architectures, the registry and the weight table. Importing this registers every model."""
from . import scnet as _scnet  # noqa: F401  (registers the builders)
from .blocks import Bottleneck, SCBottleneck
from .registry import create_any_model, get_model_builder, list_models, register_model
from .resnet import ResNet
from .scnet import plain_twin, sc_twin
from .resolve import create_model, load_checkpoint, load_pretrained, resolve
from .weights import PRETRAINED, WeightsUnavailableError

__all__ = [
    "Bottleneck", "PRETRAINED", "ResNet", "SCBottleneck", "WeightsUnavailableError", "create_any_model", "create_model",
    "get_model_builder", "list_models", "load_checkpoint", "load_pretrained", "plain_twin", "sc_twin",
    "register_model", "resolve",
]
