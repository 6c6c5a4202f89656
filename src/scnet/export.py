"""Export to ONNX (dynamic batch, height and width), TorchScript or safetensors, and check ONNX against onnxruntime.

ONNX pooling kernels are static, so an exported graph keeps the r x r calibration window everywhere: it is
valid for inputs at which every calibrated map is at least r pixels on each side (``min_export_size``:
97 px for the ImageNet-stem models, as the official code). Eager PyTorch and TorchScript have no such limit.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch
import torch.nn as nn

from .fast.onnx_form import onnx_form
from .models.spec import ModelSpec, spec_of
from .errors import SettingError
from .files import write_atomically

if TYPE_CHECKING:
    from .load import LoadedModel
from .layers import CalibrationPool

__all__ = ["min_export_size", "export_onnx", "export_torchscript", "export_safetensors", "export_hf"]


def _smallest_calibrated_side(meta_model: nn.Module, in_chans: int, size: int) -> int:
    """Smallest side of any calibration-pool input for a ``size`` x ``size`` image, on a meta-device model."""
    sides: list[int] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: sides.append(min(args[0].shape[-2:])))
             for m in meta_model.modules() if isinstance(m, CalibrationPool)]
    try:
        meta_model(torch.empty(1, in_chans, size, size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return min(sides) if sides else size


def min_export_size(model: nn.Module, in_chans: int = 3, limit: int = 4096) -> int:
    """The smallest square input side for which an exported graph computes what eager PyTorch does."""
    rates = [m.pooling_r for m in model.modules() if isinstance(m, CalibrationPool)]
    if not rates:
        return 1
    r = max(rates)
    meta_model = copy.deepcopy(model).to("meta").eval()  # shapes only: no memory, no arithmetic
    if _smallest_calibrated_side(meta_model, in_chans, limit) < r:
        raise ValueError(f"no input up to {limit} px gives every calibration map at least {r} px")
    lo, hi = 1, limit
    while lo < hi:  # the smallest map grows with the input, so bisect
        mid = (lo + hi) // 2
        if _smallest_calibrated_side(meta_model, in_chans, mid) >= r:
            hi = mid
        else:
            lo = mid + 1
    return lo


def export_onnx(model: nn.Module, path: Union[str, Path], in_chans: int = 3, example_size: int = 224, max_size: int = 4096,
                spec: Optional[ModelSpec] = None, rewrites: Optional[Sequence[str]] = None) -> int:
    """Write ``model`` (eval mode) as one ONNX file with dynamic batch/height/width; returns the minimum side.

    With ``spec``, the file carries it as ONNX metadata (``ModelSpec.metadata``: the keys a release has), so whoever
    runs it knows the classes and the preprocessing without the library. ``rewrites``: None writes the model's own
    graph; a sequence (empty included: norms folded only) writes ``fast.onnx_form(model, rewrites)``, the same
    function in the form the engines fuse."""
    from torch.export import Dim

    model = model.eval()
    min_side = min_export_size(model, in_chans)
    if rewrites is not None:
        model = onnx_form(model, rewrites)
    example_size = max(example_size, min_side)
    dims = {0: Dim("batch", min=1, max=4096), 2: Dim("height", min=min_side, max=max_size), 3: Dim("width", min=min_side, max=max_size)}
    example = (torch.randn(2, in_chans, example_size, example_size),)

    def write(tmp: Path) -> None:
        torch.onnx.export(model, example, str(tmp), dynamo=True, external_data=False, dynamic_shapes=(dims,),
                          input_names=["input"], output_names=["output"], verbose=False)
        if spec is not None:
            import onnx

            graph = onnx.load(str(tmp))
            onnx.helper.set_model_props(graph, spec.metadata())
            onnx.save(graph, str(tmp))

    write_atomically(Path(path), write)  # whole or not at all, like every file we write
    return min_side


def export_torchscript(model: nn.Module, path: Union[str, Path]) -> None:
    """Script (not trace) the model, so every input size and the small-map rule keep working."""
    scripted = torch.jit.script(model.eval())
    write_atomically(Path(path), lambda tmp: scripted.save(str(tmp)))


def export_safetensors(model: nn.Module, arch: str, path: Union[str, Path], info: Optional[ModelSpec] = None) -> dict[str, str]:
    """The weights alone, as safetensors with what a user needs to rebuild and feed the model (metadata).

    Why safetensors: loading one can never run code, unlike a pickle. The metadata (``ModelSpec.metadata``, the
    same keys a training run's release has) names the architecture (the loader refuses the file for another one),
    classes, input channels and size, mean/std and the library version, and holds the whole spec, so that
    ``scnet.load_model(arch, file)`` gets the model's classes and preprocessing back; a digest of the tensors lets
    every read detect corruption. ``info`` is the model's spec (a trained model's); else the model's pretrained
    config gives it. Returns the metadata.
    """
    from .files import write_release

    spec = replace(info if info is not None else spec_of(model), arch=arch)
    meta = spec.metadata()
    write_release(model.state_dict(), Path(path), meta)
    return meta


def export_hf(loaded: "LoadedModel", out: Union[str, Path]) -> Path:
    """A model (from ``scnet.load_model``) as a folder in timm's Hugging Face Hub layout: ``config.json`` and
    ``model.safetensors``, written by timm's own ``save_for_hf``.

    ``config.json`` holds the architecture, ``num_classes``, the builder's arguments (``in_chans``, a stem or norm
    override) and a ``pretrained_cfg`` with the input size, mean/std, crop and the class names, so that
    ``timm.create_model("local-dir:OUT", pretrained=True)`` and ``scnet.create_model("local-dir:OUT")`` rebuild the
    same model, and after an upload to the Hub, ``hf-hub:ORG/NAME`` does too. Returns the folder.
    """
    import timm
    from timm.models._hub import save_for_hf

    if not loaded.arch or not timm.is_model(loaded.arch) or not hasattr(loaded.model, "pretrained_cfg"):
        raise ValueError(f"{loaded.label} is not a model built by timm's factory (ours are), so timm could not rebuild "
                         "it from config.json")
    info, out = loaded.info, Path(out)
    if out.exists() and not out.is_dir():
        raise SettingError(f"{{out}} {out} is a file; the Hub layout is a folder", "out")
    labels = list(info.classes)  # at the top (timm's place) and inside pretrained_cfg (where readers look first)
    inner = dict(label_names=labels, num_classes=info.num_classes)  # timm drops label names of another class count
    save_for_hf(loaded.model, str(out), model_config=dict(label_names=labels, pretrained_cfg=inner),
                model_args=dict(loaded.model_args),
                safe_serialization=True, data_config=info.data_config())
    return out
