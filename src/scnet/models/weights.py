"""The weight table and the one path every weight file takes into a model.

``pretrained=True``, ``checkpoint_path=`` and every tool go through ``load_checkpoint``: read the file
safely (safetensors, or ``torch.load(weights_only=True)`` which never unpickles code), unwrap the usual
containers, remap legacy names in ``filter_state_dict``, check names and shapes, load.
"""
from __future__ import annotations

import hashlib
import re
import urllib.error
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

__all__ = [
    "PretrainedWeights", "PRETRAINED", "WeightsUnavailableError", "download_weights",
    "load_pretrained", "read_checkpoint", "load_state_dict_file", "filter_state_dict", "load_checkpoint", "verify_sha256",
    "tensors_sha256", "check_arch",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_OFFICIAL_HOST = "https://backseason.oss-cn-beijing.aliyuncs.com/scnet/"


@dataclass(frozen=True)
class PretrainedWeights:
    """Where a weight file lives and what it expects. ``sha256_prefix`` is the hash part of the file name."""

    url: str
    sha256_prefix: str
    top1: float
    top5: float
    num_classes: int = 1000
    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.875  # Resize(256) + CenterCrop(224), the PyTorch ImageNet example the authors used
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    origin: str = "https://github.com/MCG-NKU/SCNet"

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# Accuracies are the official README's (ImageNet-1k val, 224 px, single crop).
PRETRAINED: dict[str, PretrainedWeights] = {
    "scnet50": PretrainedWeights(_OFFICIAL_HOST + "scnet50-dc6a7e87.pth", "dc6a7e87", top1=77.81, top5=93.92),
    "scnet50_v1d": PretrainedWeights(_OFFICIAL_HOST + "scnet50_v1d-4109d1e1.pth", "4109d1e1", top1=80.47, top5=95.32),
    "scnet101": PretrainedWeights(_OFFICIAL_HOST + "scnet101-44c5b751.pth", "44c5b751", top1=78.94, top5=94.25),
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
        raise ValueError(f"--sha256 must be 8 to 64 hexadecimal digits, got {expected!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    digest = _sha256(path)
    if not digest.startswith(want):
        raise ValueError(f"{path} has sha256 {digest[:len(want)]}..., expected {want}: the file is corrupt or not the one published")
    return digest


def download_weights(spec: PretrainedWeights, cache_dir: Union[str, Path, None] = None, progress: bool = True) -> Path:
    """Return the local path of ``spec``'s file, downloading it into the torch hub cache if needed.

    The sha256 prefix is checked both for a cached file and for a fresh download. Offline, the error names
    the file, its URL and the exact place to put a copy fetched by hand.
    """
    cache = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    dest = cache / spec.filename
    if dest.exists():
        digest = _sha256(dest)
        if not digest.startswith(spec.sha256_prefix):
            raise WeightsUnavailableError(
                f"{dest} has sha256 {digest[:16]}..., expected a prefix {spec.sha256_prefix}: the file is corrupt or "
                f"not the published one; delete it and try again"
            )
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(spec.url, str(dest), hash_prefix=spec.sha256_prefix, progress=progress)
    except (urllib.error.URLError, OSError) as e:
        raise WeightsUnavailableError(
            f"could not download {spec.url} ({getattr(e, 'reason', e)}). If this machine is offline, download "
            f"{spec.filename} elsewhere and copy it to {dest} (or pass checkpoint_path=...)"
        ) from e
    except RuntimeError as e:  # torch.hub's hash check; it has already removed the partial file
        raise WeightsUnavailableError(f"{spec.url} did not match its sha256 prefix {spec.sha256_prefix}: {e}") from e
    return dest


def load_pretrained(model: nn.Module, name: str, cache_dir: Union[str, Path, None] = None, progress: bool = True) -> nn.Module:
    """Load the published weights of ``name`` into ``model``."""
    spec = PRETRAINED.get(name)
    if spec is None:
        known = ", ".join(sorted(PRETRAINED))
        raise WeightsUnavailableError(
            f"{name} has no published pretrained weights (models with weights: {known}); "
            f"train it, or load your own file with checkpoint_path=..."
        )
    return load_checkpoint(model, download_weights(spec, cache_dir, progress))


def read_checkpoint(path: Union[str, Path]) -> dict:
    """Read a whole torch checkpoint (weights, optimizer, config, ...) without ever unpickling code.

    ``weights_only=True`` admits only tensors and plain Python containers; anything else is refused with the
    name of the global it would have needed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return _read_safetensors_release(path)
    _check_zip_integrity(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure of the safe unpickler means "not a plain checkpoint"
        # torch words it "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose module x is blocked".
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(e), flags=re.IGNORECASE)
        if found or "weights only load failed" in str(e).lower():
            names = [found.group(1)] if found else _foreign_globals(path)
            what = f"the Python global {names[0]!r}" if names else "a Python object"
            raise ValueError(f"refusing to load {path}: it needs {what}, which could run code; "
                             "only plain tensor checkpoints are loaded") from e
        first = str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__
        raise ValueError(f"{path} is damaged or not a torch checkpoint ({first})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a dictionary")
    return obj


def _foreign_globals(path: Path) -> list[str]:
    """The globals a torch file's pickle would import, other than torch's and the standard containers.

    Read with ``pickletools`` (which parses and never executes), to name the culprit when the safe unpickler
    stops at an instruction it does not support before it reaches the global.
    """
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        else:
            data = path.read_bytes()
        names, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(arg)
            elif op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 - an unparsable pickle: no name to report
        return []
    safe = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset", "_codecs.encode")
    return [n for n in names if not n.startswith(safe)]


def _check_zip_integrity(path: Path) -> None:
    """Verify the CRC-32 of every part of a zip-format torch file before unpickling anything from it.

    Why: ``torch.load`` does not check them, so flipped bytes inside a tensor load silently as wrong weights.
    Files in the legacy (pre-1.6) pickle format carry no checksums and are not checked.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path} is damaged ({e}); use an earlier checkpoint or the original file") from e
    if bad is not None:
        part = bad.split("/", 1)[-1]  # the archive's top folder is named after whatever file name it was written under
        raise ValueError(f"{path} is damaged: its part {part!r} fails its CRC-32 check; use an earlier checkpoint or the original file")


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A digest of names, dtypes, shapes and bytes: released safetensors files carry it to detect corruption."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


RELEASE_JSON_KEYS = ("config", "data_info")


def _read_safetensors_release(path: Path) -> dict:
    """A ``.safetensors`` file as a checkpoint dict: tensors under "model", our metadata decoded beside them."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - a damaged header or body: say which file
        raise ValueError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]})") from e
    if "tensors_sha256" in meta and tensors_sha256(tensors) != meta["tensors_sha256"]:
        raise ValueError(f"{path} is damaged: its tensors do not match the digest stored in the file")
    obj: dict = dict(model=tensors, metadata=dict(meta))
    for key in RELEASE_JSON_KEYS:
        if key in meta:
            obj[key] = json.loads(meta[key])
    if "epoch" in meta:
        obj["epoch"] = int(meta["epoch"])
    if "arch" in meta:
        obj["arch"] = meta["arch"]
    return obj


def check_arch(obj: dict, path: Union[str, Path], arch: str) -> None:
    """Refuse a file that declares another architecture than ``arch``, saying what differs."""
    declared = obj.get("arch")  # training checkpoints and our safetensors files name their architecture
    if not isinstance(declared, str) or declared == arch:
        return
    meta = obj.get("metadata") or {}
    info = obj.get("data_info") or {}
    facts = [f"{k} {meta.get(k, info.get(k))}" for k in ("num_classes", "in_chans") if meta.get(k, info.get(k)) is not None]
    raise ValueError(f"{path} holds weights of {declared}{' (' + ', '.join(facts) + ')' if facts else ''}, not {arch}; "
                     f"build {declared!r} to load it")


def load_state_dict_file(path: Union[str, Path], arch: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or torch file as a flat state dict (unwrapping training checkpoints).

    With ``arch``, a file that declares another architecture is refused (``check_arch``).
    """
    obj = read_checkpoint(path)  # a .safetensors file comes back as {"model": tensors, "metadata": ...}
    if arch is not None:
        check_arch(obj, path, arch)
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (name -> tensor)")
    return obj


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


def load_checkpoint(model: nn.Module, path: Union[str, Path], strict: bool = True, classifier: Optional[str] = "fc",
                    arch: Optional[str] = None) -> nn.Module:
    """Load a weight file into ``model``, checking every name and shape first.

    A classifier of another size than the model's (e.g. ImageNet weights into a 10-class model) is left at
    its initialisation, so pretrained backbones can be fine-tuned; every other difference is an error. With
    ``arch`` (the model's registered name), a file declaring another architecture is refused up front.
    """
    state = filter_state_dict(load_state_dict_file(path, arch))
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
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in state if k in own and state[k].shape != own[k].shape]
    if wrong_shape or (strict and (missing or unexpected)):
        problems = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if items:
                problems.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
        raise ValueError(f"{path} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    return model

