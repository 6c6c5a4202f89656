"""Every file kind scnet reads or writes, each with one reader and one writer.

- torch checkpoints (``.pth``): read by ``read_checkpoint`` without ever unpickling code, their zip checksums
  verified first; written atomically by ``write_atomically``.
- timm's Hub layout (a folder, or a Hugging Face Hub repository, with ``config.json`` and ``model.safetensors``):
  read by ``read_hub_config`` from ``local-dir:PATH`` or ``hf-hub:ORG/NAME``; written by ``export.export_hf``.
- released weights (``.safetensors``): tensors with string metadata and a digest of the tensors, written by
  ``write_release`` with the metadata of ``models.spec.ModelSpec.metadata`` (the one format: training's best
  weights and ``scnet export`` write the same keys), read back by ``read_checkpoint`` as a dict like a checkpoint's.

Nothing here knows a model or a training loop: ``scnet.load`` turns what these read into models.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

__all__ = ["HUB_PREFIXES", "read_checkpoint", "read_hub_config", "write_atomically", "write_release",
           "tensors_sha256", "check_arch", "is_training_checkpoint"]

HUB_PREFIXES = ("local-dir:", "hf-hub:")  # timm's model references for its Hub layout


def read_checkpoint(path: Union[str, Path]) -> dict:
    """Read a whole torch checkpoint (weights, optimizer, config, ...) without ever unpickling code.

    ``weights_only=True`` admits only tensors and plain Python containers; anything else is refused with the
    name of the global it would have needed.
    """
    path = Path(path)
    check_is_file(path)
    if path.suffix == ".safetensors":
        return _read_safetensors_release(path)
    _check_zip_integrity(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure of the safe unpickler means "not a plain checkpoint"
        # torch words it "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose module x is blocked".
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(e), flags=re.IGNORECASE)
        names = [found.group(1)] if found else _foreign_globals(path)
        if names is not None and (found or "weights only load failed" in str(e).lower()):
            what = f"the Python global {names[0]!r}" if names else "a Python object"
            raise ValueError(f"refusing to load {path}: it needs {what}, which could run code; "
                             "only plain tensor checkpoints are loaded") from e
        first = str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__
        raise ValueError(f"{path} is damaged or not a torch checkpoint ({first})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a dictionary")
    return obj


def check_is_file(path: Path) -> None:
    """A missing file, or a folder where a file is wanted, each said as it is."""
    if path.is_dir():
        names = sorted(p.name for p in path.glob("*.pth")) + sorted(p.name for p in path.glob("*.safetensors"))
        raise FileNotFoundError(f"{path} is a directory; give a checkpoint file"
                                + (f" inside it, e.g. {path / names[0]}" if names else " (it holds no .pth or .safetensors file)"))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")


def _foreign_globals(path: Path) -> Optional[list[str]]:
    """The globals a torch file's pickle would import, other than torch's and the standard containers; None when
    the file holds no pickle at all (random bytes, another format): it is then damaged, not dangerous.

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
    except Exception:  # noqa: BLE001 - not a pickle: nothing in it could run
        return None
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


RELEASE_JSON_KEYS = ("config", "data_info", "input_size", "mean", "std")  # JSON-encoded in the metadata


def _read_safetensors_release(path: Path) -> dict:
    """A ``.safetensors`` file as a checkpoint dict: tensors under "model", our metadata decoded beside them."""
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


def is_training_checkpoint(obj: dict[str, Any]) -> bool:
    """Whether a file read by ``read_checkpoint`` describes its own model: a training checkpoint or a release of one
    (its configuration and dataset description are inside), as opposed to bare weights."""
    return isinstance(obj.get("config"), dict) and isinstance(obj.get("data_info"), dict) and isinstance(obj.get("model"), dict)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, flushed to disk, then renamed over ``path``.

    A crash at any moment leaves either the previous file or the new one, never a partial file. A failed write
    (disk full, quota, I/O error) removes the temporary file and raises an ``OSError`` that says the previous
    file is intact.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process: a run never writes over another's
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - torch.save raises RuntimeError and safetensors SafetensorError for a full disk
        tmp.unlink(missing_ok=True)
        kept = "the previous file is intact" if path.exists() else "no earlier file existed"
        raise OSError(getattr(e, "errno", None), f"could not write {path} ({_why(e)}); {kept}") from e
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems cannot fsync a directory; the rename is still atomic
        pass


# Words with which the libraries that write for us report a failed write to the disk: torch.save's zip writer
# ("[enforce fail at inline_container.cc] unexpected pos", "file write failed"), safetensors ("IoError", "StorageFull").
_IO_FAILURE_WORDS = ("inline_container", "write failed", "ioerror", "i/o error", "storagefull", "no space", "quota", "too large")


def _why(error: Exception) -> str:
    """A failed write's cause in a few words: the OS's reason, or the first line of a library's message, with the
    disk named as the likely cause only when that message speaks of a failed write (not, say, an export error)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    if not first:
        return type(error).__name__
    disk = any(word in first.lower() for word in _IO_FAILURE_WORDS)
    return f"the writer failed{', is the disk full?' if disk else ':'} {type(error).__name__}: {first}"


def write_text_atomically(path: Path, text: str) -> None:
    """A small text file (a report, a log, a config) through ``write_atomically``: whole or not at all."""
    write_atomically(Path(path), lambda tmp: tmp.write_text(text))


def write_release(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Weights for distribution: a ``.safetensors`` file (no code can hide in it) with string metadata, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    metadata = {**metadata, "tensors_sha256": tensors_sha256(tensors)}  # checked on every read
    write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_hub_config(ref: str) -> tuple[dict[str, Any], Path]:
    """``local-dir:PATH`` or ``hf-hub:ORG/NAME``: (the parsed ``config.json``, the path of its ``model.safetensors``,
    which ``read_checkpoint`` reads once the configuration is known to be usable).

    The layout is timm's (``timm.create_model(ref, pretrained=True)`` reads the same folder): ``architecture``,
    ``num_classes``, ``model_args`` (the builder's arguments) and ``pretrained_cfg`` (input size, mean/std, label
    names). ``hf-hub:`` downloads both files into the Hugging Face cache (it needs the network the first time).
    """
    source, _, where = ref.partition(":")
    if source == "hf-hub":
        from huggingface_hub import hf_hub_download

        repo, _, revision = where.partition("@")
        config_path = Path(hf_hub_download(repo, "config.json", revision=revision or None))
        weights_path = Path(hf_hub_download(repo, "model.safetensors", revision=revision or None))
    elif source == "local-dir":
        folder = Path(where)
        config_path, weights_path = folder / "config.json", folder / "model.safetensors"
        if not config_path.is_file():
            raise ValueError(f"{ref}: {folder} has no config.json, so it is not a model folder in timm's Hub layout "
                             "(config.json + model.safetensors, as scnet.export.export_hf writes)")
        if not weights_path.is_file():
            raise ValueError(f"{ref}: {folder} has config.json but no model.safetensors")
    else:
        raise ValueError(f"{ref!r} is not a Hub reference: write local-dir:PATH or hf-hub:ORG/NAME")
    if config_path.stat().st_size > MAX_HUB_CONFIG_BYTES:
        raise ValueError(f"{ref}: config.json is {config_path.stat().st_size:,} bytes; a model's config is a few kilobytes")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{ref}: config.json is not valid JSON ({str(e)[:120]})") from e
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise ValueError(f"{ref}: config.json names no architecture")
    _check_hub_fields(ref, config)
    return config, weights_path


MAX_HUB_CONFIG_BYTES = 1 << 20


def _check_hub_fields(ref: str, config: dict[str, Any]) -> None:
    """The types of the fields a model is built from, named when wrong (their sizes are checked against the
    weights file's header: ``hub_shapes``)."""
    classes = config.get("num_classes")
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        raise ValueError(f"{ref}: config.json's num_classes must be a positive integer, got {str(classes)[:40]}")
    for key in ("model_args", "pretrained_cfg"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise ValueError(f"{ref}: config.json's {key} must be an object of names and values, got "
                             f"{type(config[key]).__name__} {str(config[key])[:40]}")
    labels = config.get("label_names", (config.get("pretrained_cfg") or {}).get("label_names"))
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(n, str) for n in labels)):
        raise ValueError(f"{ref}: config.json's label_names must be a list of names")


def tensor_shapes(path: Union[str, Path]) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from a safetensors file's header, nothing else read: what a file holds, known before
    anything is built for it or allocated."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - a damaged header: say which file
        raise ValueError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]})") from e
