"""The weight table, the download of published files, and the one place weights enter a model (``load_weights``).

Files are read in ``resolve`` (through ``scnet.files.read_checkpoint``: safetensors, or ``torch.load`` with
``weights_only=True``, which never unpickles code); every tensor that reaches a model passes ``load_weights``:
legacy names remapped (``filter_state_dict``), input channels adapted, names and shapes checked, loaded.
"""
from __future__ import annotations

import hashlib
import urllib.error
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

from ..errors import SettingError
from ..files import check_is_file, tensors_sha256
from .spec import IMAGENET_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, ModelSpec

__all__ = [
    "PRETRAINED", "WeightsUnavailableError", "download_weights", "pretrained_file",
    "adapt_input_channels", "filter_state_dict", "load_weights", "verify_sha256", "tensors_sha256", "IMAGENET_MEAN",
    "IMAGENET_STD",
]

_OFFICIAL_HOST = "https://backseason.oss-cn-beijing.aliyuncs.com/scnet/"


def _official(arch: str, sha256_prefix: str, top1: float, top5: float) -> ModelSpec:
    """The spec of an official ImageNet-1k file: 224 px, Resize(256) + CenterCrop(224) with bilinear resizing (the
    PyTorch ImageNet example the authors evaluated with), ImageNet mean/std; names of the classes: timm's."""
    return ModelSpec("imagenet", 1000, 3, 224, IMAGENET_MEAN, IMAGENET_STD, (), crop_pct=IMAGENET_CROP_PCT, arch=arch,
                     url=f"{_OFFICIAL_HOST}{arch}-{sha256_prefix}.pth", sha256=sha256_prefix, top1=top1, top5=top5,
                     origin="https://github.com/MCG-NKU/SCNet")


# Accuracies are the official README's (ImageNet-1k val, 224 px, single crop).
PRETRAINED: dict[str, ModelSpec] = {
    "scnet50": _official("scnet50", "dc6a7e87", top1=77.81, top5=93.92),
    "scnet50_v1d": _official("scnet50_v1d", "4109d1e1", top1=80.47, top5=95.32),
    "scnet101": _official("scnet101", "44c5b751", top1=78.94, top5=94.25),
}


class WeightsUnavailableError(RuntimeError):
    """The weights cannot be had: none were released, or the download failed."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Union[str, Path], expected: str) -> str:
    """Check a file against a published sha256 (the whole hex digest, or a prefix of at least 8 digits).

    For files fetched by hand from third-party hosts: a mismatch means a corrupt or substituted file and is a
    ``ValueError`` naming both digests. Returns the file's full digest.
    """
    want = expected.strip().lower()
    if len(want) < 8 or len(want) > 64 or any(c not in "0123456789abcdef" for c in want):
        raise SettingError(f"{{sha256}} must be 8 to 64 hexadecimal digits, got {expected!r}", "sha256")
    path = Path(path)
    check_is_file(path)
    digest = _sha256(path)
    if not digest.startswith(want):
        raise ValueError(f"{path} has sha256 {digest[:len(want)]}..., expected {want}: the file is corrupt or not the one published")
    return digest


def download_weights(spec: ModelSpec, cache_dir: Union[str, Path, None] = None, progress: bool = True) -> Path:
    """Return the local path of ``spec``'s file (its ``url``), downloading it into the torch hub cache if needed.

    The sha256 (prefix) is checked both for a cached file and for a fresh download. Offline, the error names
    the file, its URL and the exact place to put a copy fetched by hand.
    """
    cache = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    dest = cache / spec.filename
    if dest.exists():
        digest = _sha256(dest)
        if not digest.startswith(spec.sha256):
            raise WeightsUnavailableError(
                f"{dest} has sha256 {digest[:16]}..., expected a prefix {spec.sha256}: the file is corrupt or "
                f"not the published one; delete it and try again"
            )
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(spec.url, str(dest), hash_prefix=spec.sha256, progress=progress)
    except (urllib.error.URLError, OSError) as e:
        raise WeightsUnavailableError(
            f"could not download {spec.url} ({getattr(e, 'reason', e)}). If this machine is offline, download "
            f"{spec.filename} elsewhere and copy it to {dest} (or pass checkpoint_path=...)"
        ) from e
    except RuntimeError as e:  # torch.hub's hash check; it has already removed the partial file
        raise WeightsUnavailableError(f"{spec.url} did not match its sha256 prefix {spec.sha256}: {e}") from e
    return dest


def pretrained_file(name: str, cache_dir: Union[str, Path, None] = None, progress: bool = True) -> Path:
    """The local path of ``name``'s published weights, downloaded (hash-checked) on first use."""
    spec = PRETRAINED.get(name)
    if spec is None:
        known = ", ".join(sorted(PRETRAINED))
        raise WeightsUnavailableError(
            f"{name} has no published pretrained weights (models with weights: {known}); "
            f"train it, or load your own file with checkpoint_path=..."
        )
    return download_weights(spec, cache_dir, progress)


def adapt_input_channels(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` with its first convolution adapted to ``model``'s input channels when they differ (ImageNet weights
    for grayscale images): timm's ``adapt_input_conv`` (summed for 1 channel, repeated and scaled for more)."""
    from timm.models import adapt_input_conv

    key = f"{(getattr(model, 'pretrained_cfg', None) or {}).get('first_conv', 'conv1')}.weight"
    own = model.state_dict().get(key)
    if own is None or key not in state or state[key].shape[1] == own.shape[1]:
        return state
    return {**state, key: adapt_input_conv(own.shape[1], state[key])}


def filter_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remap names from other writers: DataParallel/DDP (``module.``) and ``torch.compile`` (``_orig_mod.``).

    The official SCNet checkpoints need no remapping: the models use their names as they are.
    """
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True,
                 classifier: Optional[str] = "fc", name: Optional[str] = None) -> nn.Module:
    """The one place weights enter a model: names from other writers remapped (``filter_state_dict``), every name and
    shape checked, then loaded.

    Two allowances make pretrained backbones fine-tunable: a classifier (``classifier`` is its module name) of
    another size than the model's, e.g. ImageNet weights into a 10-class model, is left at its initialisation, and
    a first convolution for other input channels is adapted (``adapt_input_channels``: RGB weights for grayscale
    images). Every other difference is a ``ValueError`` naming ``source`` and the model (``name``, else its class).
    ``classifier=None`` keeps neither allowance (a resumed run must fit exactly).
    """
    state = filter_state_dict(state)
    if classifier is not None:
        state = adapt_input_channels(state, model)
    own = model.state_dict()
    dropped = set()
    if classifier is not None:
        head = [k for k in state if k.startswith(classifier + ".")]
        if any(k in own and own[k].shape != state[k].shape for k in head):
            dropped = set(head)
            state = {k: v for k, v in state.items() if k not in dropped}
    # BN step counters are not weights: files written before torch 0.4.1 lack them, and frozen norms
    # (detection backbones) have none to receive them.
    missing = [k for k in own if k not in state and k not in dropped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    state = {k: v for k, v in state.items() if k in own}
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in state if state[k].shape != own[k].shape]
    if wrong_shape or (strict and (missing or unexpected)):
        problems = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if items:
                problems.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
        raise ValueError(f"{source} does not fit {name or type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    return model
