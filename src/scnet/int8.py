"""int8 inference: static post-training quantization of the ONNX export with ONNX Runtime (QDQ format).

The model is exported as for ``scnet export`` (one ONNX graph, dynamic batch and size), ONNX Runtime records the
range of every activation over the calibration batches, and the graph gets quantize/dequantize pairs that its
CPU provider fuses into int8 kernels (QLinearConv: u8 activations, s8 weights per output channel).

What stays in float: ``keep_fp32`` chooses which ops are quantized. SC-Conv's gate ``K3(x) * sigmoid(x + Up(...))``
is the pattern post-training quantization is known to break (a sigmoid's output crushed to 8 bits, then a
product), so it can be kept in float ("gate": Sigmoid and Mul unquantized), or the calibration branch can
("branch": its pool, upsampling, sum, sigmoid and product left unquantized; the pool's and the product's outputs
are still quantized where K2 and K4 read them, so what runs in float is the upsampled map, the sum and the sigmoid),
or everything but the convolutions and the classifier can ("convs": only Conv and Gemm run in int8), or nothing
("none"). The default is the one the measurements in docs/results/int8 favour.

Why ONNX Runtime and not PyTorch's PT2E flow: with the pinned torch (2.14) and torchao (0.18), the x86
Inductor quantizer fails on every exported ResNet graph, torchvision's resnet18 included ("Input partition
has more than one output node"), so there is nothing to measure on that side yet.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from .engines import OnnxModel, onnx_model, relative_error  # noqa: F401  (onnx_model: the float32 baseline, importable here too)
from .errors import SettingError
from .layers.validate import check_image_batch

__all__ = ["quantize", "QuantizedModel", "KEEP_FP32", "calibration_branch_nodes", "calibration_batches", "export_int8", "logit_fidelity", "top2_margins"]

KEEP_FP32 = ("none", "gate", "branch", "convs")  # what stays in float: nothing, the gate, the calibration branch, all but the convolutions
DEFAULT_KEEP = "none"
_GATE_OPS = ("Sigmoid", "Mul")  # the gate's sigmoid and product (SE blocks have them too)
_CONV_OPS = ("Conv", "Gemm", "MatMul")  # the convolutions and the classifier


@dataclass
class QuantizedModel(OnnxModel):
    """An int8 ONNX model (see ``quantize``): what was kept in float and how many images calibrated it."""

    keep_fp32: str = DEFAULT_KEEP
    calibration_images: int = 0


def _input_channels(model: nn.Module) -> int:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError(f"quantize expects an image model with a 2-D convolution; {type(model).__name__} has none")
    return first.in_channels


def _checked(batches: Iterable[torch.Tensor], channels: int) -> list[torch.Tensor]:
    """The calibration batches as float32 (N, C, H, W) tensors of the model's channel count, or one clear error."""
    checked = []
    for i, x in enumerate(batches):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"calibration batch {i} must be a tensor (N, C, H, W), got {type(x).__name__}")
        try:
            check_image_batch(x, channels, f"quantize's calibration batch {i}")
        except (ValueError, TypeError) as e:
            raise type(e)(f"{e} (the model takes {channels}-channel images)") from None
        checked.append(x.detach().to("cpu", torch.float32))
    if not checked:
        raise ValueError("quantize needs at least one calibration batch (a few hundred images of the data it will see)")
    return checked


class _Reader:
    """ONNX Runtime's calibration data reader over the batches (its ``CalibrationDataReader`` protocol)."""

    def __init__(self, batches: list[torch.Tensor]) -> None:
        self._batches: Iterator[torch.Tensor] = iter(batches)

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        x = next(self._batches, None)
        return None if x is None else {"input": x.numpy()}


# The calibration branch as the exporter writes it, from the features to the gated product: AvgPool(r) -> K2 (Conv,
# and its norm where not yet folded) -> nearest Up (Resize; absent where the pooled map already has the features'
# size) -> Add (the features) -> Sigmoid -> Mul (K3's output). Matched on the graph, so every form and variant of a
# block is found the same way. (op, may be absent)
_BRANCH_CHAIN = (("AveragePool", False), ("Conv", False), ("BatchNormalization", True), ("Resize", True), ("Add", False),
                 ("Sigmoid", False), ("Mul", False))
_K2_OPS = ("Conv", "BatchNormalization")  # K2's steps of the chain: quantized like every convolution


def calibration_branch_nodes(graph: Any) -> list[str]:
    """The names of an ONNX graph's calibration-branch nodes other than K2's (see ``_BRANCH_CHAIN``): what
    ``keep_fp32="branch"`` leaves in float. Only a whole chain counts, so an avd pool or a residual Add never does."""
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    found = []
    for start in (n for n in graph.node if n.op_type == _BRANCH_CHAIN[0][0]):
        chain = [start]
        for op, optional in _BRANCH_CHAIN[1:]:
            nxt = [r for r in readers.get(chain[-1].output[0], []) if r.op_type == op]
            if len(nxt) == 1:
                chain.append(nxt[0])
            elif not optional:
                break
        if chain[-1].op_type == _BRANCH_CHAIN[-1][0]:
            found += [n.name for n in chain if n.op_type not in _K2_OPS]
    return found


def _quantized_ops(keep_fp32: str) -> list[str]:
    """The op types to quantize: ONNX Runtime's own default set (its QDQ and QLinear registries) less those kept."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    if keep_fp32 == "convs":
        return list(_CONV_OPS)
    kept = _GATE_OPS if keep_fp32 == "gate" else ()
    return sorted(op for op in {*QDQRegistry, *QLinearOpsRegistry} if op not in kept)


def quantize(
    model: nn.Module, calibration_batches: Iterable[torch.Tensor], path: Union[str, Path, None] = None,
    keep_fp32: str = DEFAULT_KEEP, threads: int = 0, engine: str = "onnxruntime", spin: Optional[bool] = None,
    rewrites: Optional[Sequence[str]] = None,
) -> QuantizedModel:
    """An int8 copy of an eval-mode image model, calibrated on ``calibration_batches`` (normalised (N, C, H, W) tensors).

    ``path``: where the int8 ONNX file is written (default: a temporary folder). ``keep_fp32``: "none", "gate",
    "branch" or "convs" (see the module's docstring). ``engine``: what runs the int8 file, ONNX Runtime or OpenVINO
    (``engines.OnnxModel``; both turn the quantize/dequantize pairs into int8 kernels). ``rewrites``: the float32
    graph quantized, as ``export.export_onnx`` takes them. Raises ``ValueError``
    for a model in training mode (its norms would not be the ones it is deployed with) and for calibration data
    of another shape than the model takes.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .export import export_onnx

    if model.training:
        raise ValueError("quantize needs a model in eval mode: int8 ranges are calibrated on the eval-mode network "
                         "(running norm statistics); call model.eval() first")
    if keep_fp32 not in KEEP_FP32:
        raise ValueError(f"keep_fp32 must be one of {KEEP_FP32}, got {keep_fp32!r}")
    batches = _checked(calibration_batches, _input_channels(model))
    out, folder = (Path(path), None) if path is not None else OnnxModel.in_temporary_folder()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        fp32, prepared = Path(work) / "fp32.onnx", Path(work) / "prepared.onnx"
        export_onnx(model, fp32, in_chans=batches[0].shape[1], example_size=max(batches[0].shape[-2:]), rewrites=rewrites)
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # the dynamic sizes defeat its symbolic pass
        kept = calibration_branch_nodes(onnx.load(str(prepared)).graph) if keep_fp32 == "branch" else []
        quantize_static(str(prepared), str(out), _Reader(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=_quantized_ops(keep_fp32),
                        nodes_to_exclude=kept)
    return QuantizedModel(out, threads, engine, spin, _folder=folder, keep_fp32=keep_fp32, calibration_images=sum(b.shape[0] for b in batches))


def calibration_batches(dataset, count: int = 512, batch_size: int = 64) -> list[torch.Tensor]:
    """The first ``count`` images of a dataset of this package (``build_datasets``), normalised, in batches."""
    if count < 1:
        raise ValueError(f"the calibration image count must be >= 1, got {count}")
    count = min(count, len(dataset))
    if hasattr(dataset, "batch"):  # TensorImages: whole batches in one call
        return [dataset.batch(torch.arange(i, min(i + batch_size, count)))[0] for i in range(0, count, batch_size)]
    return [torch.stack([dataset[j][0] for j in range(i, min(i + batch_size, count))]) for i in range(0, count, batch_size)]


def logit_fidelity(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    """How far int8 logits ``out`` are from float32 logits ``ref`` (both (N, classes)): the percentage of images whose
    top class is the same, and the relative error of the whole batch (``engines.relative_error``)."""
    if ref.shape != out.shape or ref.dim() != 2:
        raise ValueError(f"logit_fidelity compares two (N, classes) tensors of one shape, got {tuple(ref.shape)} and {tuple(out.shape)}")
    agree = 100.0 * float((out.argmax(1) == ref.argmax(1)).float().mean())
    return dict(top1_agreement=agree, rel_error=relative_error(out, ref), images=int(ref.shape[0]))


def top2_margins(ref: torch.Tensor, out: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image: the float32 model's margin between its two highest logits, the RMS of what int8 changed in that
    image's logits, and their ratio.

    Why: int8 flips an image's top class when its change is as large as the margin, so two models with the same
    relative error can agree on top-1 at different rates if their margins differ. The ratio is the margin measured
    in units of the int8 change: below about 1 a flip is likely, far above it impossible.
    """
    if ref.shape != out.shape or ref.dim() != 2 or ref.shape[1] < 2:
        raise ValueError(f"top2_margins needs two (N, classes >= 2) tensors of one shape, got {tuple(ref.shape)} and {tuple(out.shape)}")
    ref, out = ref.detach().float(), out.detach().float()
    top2 = ref.topk(2, dim=1).values  # (N, 2)
    margin = top2[:, 0] - top2[:, 1]  # (N,)
    change = (out - ref).pow(2).mean(1).sqrt()  # (N,) RMS over the classes
    return dict(margin=margin, change_rms=change, ratio=margin / change.clamp_min(1e-12))


def export_int8(loaded: Any, path: Union[str, Path], data: Optional[str] = None, data_dir: Optional[str] = None,
                images: int = 512, keep_fp32: str = DEFAULT_KEEP, check_images: int = 256) -> dict[str, Any]:
    """``loaded`` (a ``scnet.load.LoadedModel``) as an int8 ONNX file at ``path``, calibrated on the first ``images``
    of its training data (``data``: another dataset's name, with ``data_dir``), then compared with the float32 model
    on ``check_images`` validation images the calibration did not see.

    Why its own data: int8's scales are the ranges calibration sees, and images unlike the model's give ranges
    unlike its inputs'. Returns the ``QuantizedModel``, the dataset's name and ``logit_fidelity``'s numbers.
    """
    from .data import build_datasets

    config = (loaded.checkpoint or {}).get("config", {})
    name = data or config.get("data") or loaded.info.name
    folder = data_dir or (config.get("data_dir") if not data else None)
    try:
        train, val, _ = build_datasets(name, folder, images, check_images, loaded.info.image_size)
    except (ValueError, FileNotFoundError) as e:
        raise SettingError(f"int8 calibrates on images like those the model will see, and {name!r} gave none ({e}); give "
                           f"{{calibration_data}} NAME (and {{data_dir}} DIR)", "calibration_data", "data_dir") from None
    quantized = quantize(loaded.model, calibration_batches(train, images), path=path, keep_fp32=keep_fp32)
    x = calibration_batches(val, check_images, check_images)[0]  # (N, C, H, W)
    with torch.no_grad():
        ref = loaded.model(x)
    return dict(quantized=quantized, data=name, fidelity=logit_fidelity(ref, quantized(x)))
