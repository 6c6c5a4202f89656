"""torch.hub entry points: every registered scnet model, e.g. ``torch.hub.load(repo, "scnet50", pretrained=True)``.

Each entry point is ``scnet.create_model(name, pretrained=..., **kwargs)``: official weights are
hash-checked and loaded with ``weights_only=True``.
"""
import os
import sys

dependencies = ["torch", "torchvision", "timm", "safetensors"]

# A checkout keeps the package under src/; load this checkout's code, not another installed copy.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from scnet.models import create_model, get_model_builder, list_models  # noqa: E402


def _entrypoint(name):
    def entrypoint(pretrained=False, **kwargs):
        return create_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = get_model_builder(name).__doc__
    return entrypoint


globals().update({name: _entrypoint(name) for name in list_models()})
