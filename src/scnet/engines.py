"""Inference engines: a model run by eager PyTorch, by our fused PyTorch form (``deploy``), by ONNX Runtime or by
OpenVINO, behind one call, each checked against eager PyTorch on the first batch it sees.

Why more than PyTorch: on a CPU the engines people deploy with can be faster than any PyTorch path for the same
float32 network (docs/results/engines measures each on SCNet-50 and ResNet-50), so ``scnet predict``/``eval`` and
``scnet bench`` can run through them. The two ONNX engines read the file ``export.export_onnx`` writes (dynamic
batch and size) or the int8 file ``int8.quantize`` writes; OpenVINO runs the latter's quantize/dequantize pairs as
int8 kernels too.
"""
from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from .fast.deploy import relative_error

__all__ = ["ENGINES", "ONNX_ENGINES", "OnnxModel", "onnx_model", "EngineModel", "EngineMismatch", "relative_error",
           "onnxruntime_options", "openvino_core", "openvino_request", "check_onnx"]

ONNX_ENGINES = ("onnxruntime", "openvino")  # engines that run an ONNX file
ENGINES = ("torch", "deploy", *ONNX_ENGINES)  # torch: eager; deploy: ``scnet.deploy``'s fused form

Runner = Callable[[np.ndarray], np.ndarray]




def onnxruntime_options(threads: int, spin: Optional[bool] = None):
    """ONNX Runtime's session options as every ONNX Runtime run here uses them (inference, the benchmark, its profile):
    ``threads`` intra-op threads (0: its default); ``spin`` whether they spin-wait for work between calls (None: its
    default, on; spinning keeps a core busy after each call, so it is off when something else runs next)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if spin is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


def _onnxruntime(path: Path, threads: int, spin: Optional[bool]) -> Runner:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), onnxruntime_options(threads, spin), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda array: session.run(None, {name: array})[0]


@functools.cache
def openvino_core():
    """The one ``openvino.Core`` of this process, kept until it exits.

    Why one: each Core's CPU plugin installs a larger signal stack for the calling thread (AMX kernels need room) and
    puts back the one it found when it is destroyed. Two Cores destroyed in the order they were made put back a stack
    the first one had already freed, and the next signal with a Python handler (SIGCHLD once a DataLoader has used
    workers) then kills the process with a segmentation fault. One Core never destroyed keeps the stack valid."""
    import openvino as ov

    return ov.Core()


def openvino_request(network, shape: tuple[int, ...], threads: int, profile: bool = False):
    """An OpenVINO infer request for ``network`` (a read ONNX model, left unchanged) compiled for one input shape, as
    every OpenVINO run here uses it: float32 (its default on CPUs with bf16 units would be bf16), the latency hint,
    ``threads`` threads (0: its default); ``profile`` turns its per-node performance counters on. Compiled by
    :func:`openvino_core`, which should also read the network."""
    import openvino as ov

    shaped = network.clone()
    shaped.reshape({shaped.inputs[0].get_any_name(): ov.PartialShape(list(shape))})
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if profile:
        config["PERF_COUNT"] = True
    return openvino_core().compile_model(shaped, "CPU", config).create_infer_request()


def _openvino(path: Path, threads: int) -> Runner:
    """OpenVINO on the CPU, one network compiled per input shape: the file's batch and size are dynamic, its compiled
    kernels are fastest for a fixed shape."""
    network = openvino_core().read_model(str(path))
    compiled: dict[tuple[int, ...], Callable] = {}

    def run(array: np.ndarray) -> np.ndarray:
        if array.shape not in compiled:
            compiled[array.shape] = openvino_request(network, array.shape, threads)
        request = compiled[array.shape]
        request.infer({0: array})
        return request.get_output_tensor(0).data.copy()

    return run


@dataclass
class OnnxModel:
    """An ONNX file run by ONNX Runtime or OpenVINO on the CPU, called like the PyTorch model it came from:
    tensors in and out."""

    path: Path
    threads: int = 0  # the engine's intra-op threads (0: its default)
    engine: str = "onnxruntime"
    spin: Optional[bool] = None  # ONNX Runtime's threads spin-wait for work between calls (None: its default, on)
    _runner: Optional[Runner] = field(default=None, repr=False)
    _folder: Optional[tempfile.TemporaryDirectory] = field(default=None, repr=False)  # removed with the object

    def __post_init__(self) -> None:
        if self.engine not in ONNX_ENGINES:
            raise ValueError(f"an ONNX file runs on one of {ONNX_ENGINES}, not {self.engine!r}")

    @classmethod
    def in_temporary_folder(cls) -> tuple[Path, tempfile.TemporaryDirectory]:
        """A file path in a fresh temporary folder that the model made there will own (and remove when collected)."""
        folder = tempfile.TemporaryDirectory(prefix="scnet-onnx-")
        return Path(folder.name) / "model.onnx", folder

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._runner is None:
            self._runner = (_onnxruntime(self.path, self.threads, self.spin) if self.engine == "onnxruntime"
                            else _openvino(self.path, self.threads))
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self._runner(array))


def onnx_model(model: nn.Module, example: torch.Tensor, path: Union[str, Path, None] = None, threads: int = 0,
               engine: str = "onnxruntime", spin: Optional[bool] = None, rewrites: Optional[Sequence[str]] = None) -> OnnxModel:
    """The float32 ONNX export of an eval-mode model, run by ``engine``; ``example`` gives the channels and a size;
    ``rewrites`` as ``export.export_onnx`` takes them."""
    from .export import export_onnx

    out, folder = (Path(path), None) if path is not None else OnnxModel.in_temporary_folder()
    export_onnx(model.eval(), out, in_chans=example.shape[1], example_size=max(example.shape[-2:]), rewrites=rewrites)
    return OnnxModel(out, threads, engine, spin, _folder=folder)


class EngineMismatch(RuntimeError):
    """An engine's outputs for the first batch are not eager PyTorch's (beyond float rounding)."""


def _check_installed(engine: str) -> None:
    """An ONNX engine's package, checked before seconds of export are spent for it."""
    import importlib.util

    if engine in ONNX_ENGINES and importlib.util.find_spec(engine) is None:  # each is named as its package
        raise ImportError(f"engine {engine} needs the {engine} package: pip install {engine}")


class EngineModel(nn.Module):
    """``model`` run by ``engine``: built on the first batch (an ONNX export needs a channel count and a size), whose
    outputs are compared with eager PyTorch's before any is returned; ``EngineMismatch`` if they differ by more than
    ``rtol`` (relative error of the whole batch's outputs). Called like the model; ``eval()`` is a no-op.

    Only float32 engines belong here: int8 moves the logits on purpose (``int8.quantize``, measured in its report).
    """

    def __init__(self, model: nn.Module, engine: str = "torch", threads: int = 0, rtol: float = 1e-4) -> None:
        super().__init__()
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if model.training:
            raise ValueError("an engine runs a model in eval mode (its norms' running statistics); call model.eval() first")
        _check_installed(engine)
        self.reference = model
        self.engine, self.threads, self.rtol = engine, threads, rtol
        self._run: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        self.first_error: Optional[float] = None  # relative error on the first batch, once checked
        self._min_side = 1  # the smallest input side the engine computes correctly (ONNX engines: set when built)
        self.train(False)

    def _build(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.engine == "torch":
            return self.reference
        if self.engine == "deploy":
            from .fast import deploy

            return deploy(self.reference)
        from .export import min_export_size

        self._min_side = min_export_size(self.reference, x.shape[1])
        self._check_size(x)
        return onnx_model(self.reference, x, threads=self.threads, engine=self.engine)

    def _check_size(self, x: torch.Tensor) -> None:
        """An ONNX file keeps the r x r calibration window everywhere (``export.min_export_size``): on smaller inputs
        it would compute something else, so they are refused before anything runs."""
        if min(x.shape[-2:]) < self._min_side:
            raise ValueError(f"{self.engine} runs the model's ONNX export, which computes what PyTorch does only for inputs "
                             f"of at least {self._min_side} px a side; got {x.shape[-2]}x{x.shape[-1]}: use the torch or "
                             "deploy engine for these")

    def train(self, mode: bool = True) -> "EngineModel":
        if mode:
            raise ValueError("an engine runs a model for inference only; train the PyTorch model")
        return super().train(False)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._run is not None:
            self._check_size(x)
            return self._run(x)
        run = self._build(x)
        out, ref = run(x), self.reference(x)
        self.first_error = relative_error(out, ref)
        if not self.first_error <= self.rtol:  # also catches NaN
            raise EngineMismatch(f"{self.engine} gives other outputs than eager PyTorch on the first batch (relative "
                                 f"error {self.first_error:.2e} > {self.rtol:.0e}); run with the torch engine")
        self._run = run
        return out


def check_onnx(model: nn.Module, path: Union[str, Path], sizes: Sequence[tuple[int, int]], in_chans: int = 3, batch: int = 2,
               seed: int = 0, rtol: float = 1e-4) -> list[dict]:
    """Run the ONNX file in onnxruntime and eager PyTorch on the same inputs: per size the relative error, argmax
    agreement and whether the file passes (``ok``: error within ``rtol`` and the same argmax everywhere).

    Here, beside the engine it runs (not in ``export``): the export is below the engines, and a check of a file by an
    engine is the engines' work."""
    run = OnnxModel(Path(path))
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for h, w in sizes:
        x = torch.randn(batch, in_chans, h, w, generator=gen)
        with torch.no_grad():
            ref = model.eval()(x)
        out = run(x)
        error, same = relative_error(out, ref), bool((out.argmax(-1) == ref.argmax(-1)).all())
        rows.append(dict(size=f"{h}x{w}", rel_error=error, argmax_equal=same, ok=error <= rtol and same))
    return rows
