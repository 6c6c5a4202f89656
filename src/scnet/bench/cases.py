"""What ``scnet bench`` measures: the modes as data, one case per (model, mode, batch, size), how each is built
into a callable that does one timed call, and the torch settings a measurement runs under (restored after)."""
from __future__ import annotations

import contextlib
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from ..int8 import KEEP_FP32

__all__ = ["BenchCase", "DTYPES", "MODES", "ONNX_FORMS", "form_mode", "grid", "make_inputs", "input_dtype", "prepare", "torch_settings"]

# Modes as data: layout, how ``deploy`` rewrites the model (None: not at all), compilation, training.
# deploy_nchw and deploy_portable isolate the ingredients: folding alone, then + channels_last, then (deploy)
# + oneDNN post-op fusion and pre-packed weights.
MODES: dict[str, dict[str, Any]] = {
    "eager": dict(channels_last=False, deploy=None, compile=False, train=False),
    "eager_cl": dict(channels_last=True, deploy=None, compile=False, train=False),
    "deploy_nchw": dict(channels_last=False, deploy=dict(channels_last=False, backend="portable"), compile=False, train=False),
    "deploy_portable": dict(channels_last=True, deploy=dict(channels_last=True, backend="portable"), compile=False, train=False),
    "deploy": dict(channels_last=True, deploy=dict(channels_last=True, backend="auto"), compile=False, train=False),
    "compiled": dict(channels_last=True, deploy=dict(channels_last=True, backend="auto"), compile=True, train=False),  # inductor + freezing
    "graph": dict(channels_last=True, deploy=None, compile=False, train=False, graph=True),  # CUDA graph replay
    "deploy_graph": dict(channels_last=True, deploy=dict(channels_last=True, backend="auto"), compile=False, train=False, graph=True),
    # ONNX Runtime (CPU): the float32 export, and int8 static quantization with what ``keep_fp32`` keeps in float;
    # OpenVINO (CPU) running the same two files; each also as MODE_FORM (``form_mode``), from the graph
    # ``fast.onnx_form`` rewrites (ONNX_FORMS: norms folded only, one rewrite, or both).
    "onnx": dict(channels_last=False, deploy=None, compile=False, train=False, onnx="fp32"),
    "int8": dict(channels_last=False, deploy=None, compile=False, train=False, onnx="none"),
    "openvino": dict(channels_last=False, deploy=None, compile=False, train=False, onnx="fp32", engine="openvino"),
    "openvino_int8": dict(channels_last=False, deploy=None, compile=False, train=False, onnx="none", engine="openvino"),
    "train": dict(channels_last=False, deploy=None, compile=False, train=True),
    "train_cl": dict(channels_last=True, deploy=None, compile=False, train=True),
    "train_compiled": dict(channels_last=True, deploy=None, compile=True, train=True),
}

# The graphs the ONNX modes can also run (``scnet.fast.onnx_form``'s rewrites): norms folded only, one rewrite, both.
ONNX_FORMS = {"fold": (), "merge": ("merge_conv1",), "split": ("split_conv3",), "rw": ("merge_conv1", "split_conv3")}


def form_mode(mode: str, form: str) -> str:
    """The bench mode of ONNX ``mode`` run on ``form`` (a key of ONNX_FORMS; "export": the model's own graph)."""
    return mode if form == "export" else f"{mode}_{form}"


# int8 with more kept in float (``int8.KEEP_FP32``), on either engine: int8_gate, openvino_int8_branch, ...
MODES.update({f"{mode}_{keep}": dict(MODES[mode], onnx=keep) for mode in ("int8", "openvino_int8")
              for keep in KEEP_FP32 if keep != "none"})
ONNX_MODES = tuple(m for m, spec in MODES.items() if "onnx" in spec)
MODES.update({form_mode(mode, form): dict(MODES[mode], rewrites=rewrites)
              for mode in ONNX_MODES for form, rewrites in ONNX_FORMS.items()})

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

@dataclass
class BenchCase:
    """One measured configuration and its results (seconds per call, over the timed rounds)."""

    model: str
    mode: str
    batch: int
    size: int
    times: list[float] = field(default_factory=list)
    peak_mem_mb: Optional[float] = None
    macs: Optional[float] = None  # per image, at ``size``
    error: Optional[str] = None

    @property
    def train(self) -> bool:
        return MODES[self.mode]["train"]

    def summary(self, roof_gflops: Optional[float]) -> dict[str, Any]:
        row = dict(model=self.model, mode=self.mode, batch=self.batch, size=self.size, train=self.train, error=self.error,
                   peak_mem_mb=self.peak_mem_mb, macs_per_image=self.macs)
        if self.times:
            med = statistics.median(self.times)
            row.update(latency_ms=1e3 * med, latency_min_ms=1e3 * min(self.times), latency_max_ms=1e3 * max(self.times),
                       spread_pct=100.0 * (max(self.times) - min(self.times)) / med, images_per_s=self.batch / med,
                       repeats=len(self.times))
            if self.macs:
                flops = 2.0 * self.macs * self.batch * (3.0 if self.train else 1.0)  # backward ~ twice the forward
                row["gflops"] = flops / med / 1e9
                if roof_gflops:
                    row["roof_fraction"] = row["gflops"] / roof_gflops
        return row




@contextlib.contextmanager
def torch_settings(device: torch.device, freezing: bool = False) -> Iterator[None]:
    """The process-wide torch flags a measurement wants, restored on exit: cuDNN's algorithm search on a GPU (fixed
    shapes: let it pick the fastest per shape) and, for compiled inference, inductor's freezing (weights become
    constants, folded and pre-packed). Compilation happens on a model's first call, so calls run inside."""
    import torch._inductor.config as inductor_config

    saved = torch.backends.cudnn.benchmark, inductor_config.freezing
    try:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if freezing:
            inductor_config.freezing = True
        yield
    finally:
        torch.backends.cudnn.benchmark, inductor_config.freezing = saved


def prepare(name: str, mode: str, device: torch.device, dtype: torch.dtype) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """Build ``name`` for ``mode`` and return a function doing one timed call (inference or a training step)."""
    from ..fast import cuda_graph, deploy, fast_train
    from ..load import load_model

    spec = MODES[mode]
    model = load_model(name).model.to(device)
    if spec["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    if spec["train"]:
        fast_train(model.train())  # what scnet train runs: the training fast forms
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        net = torch.compile(model) if spec["compile"] else model

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = F.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step
    model.eval()
    if spec.get("onnx"):
        return _onnx_runner(model, name, spec["onnx"], spec.get("engine", "onnxruntime"), device, dtype, spec.get("rewrites"))
    if spec["deploy"] is not None:  # a model without SC layers or our blocks comes back unfused, as a copy
        model = deploy(model, **spec["deploy"])
    if dtype != torch.float32:
        model = model.to(dtype)
    net = model
    if spec["compile"]:  # compiled on the first call, with inductor's freezing on (see ``torch_settings``)
        net = torch.compile(model)

    graphs: dict[tuple, Callable] = {}

    def infer(x: torch.Tensor, y: torch.Tensor) -> None:
        if spec.get("graph"):  # one recorded graph per input shape, made on the first (warm-up) call
            key = (tuple(x.shape), x.dtype)
            if key not in graphs:
                graphs[key] = cuda_graph(net, x)
            graphs[key](x)
            return
        with torch.inference_mode():
            net(x)

    return infer


# ONNX files made in this process, by (model, what is kept in float or "fp32", rewrites): both engines and every batch
# size run the same file, so a table of many cases exports and calibrates each network once.
_ONNX_FILES: dict[tuple[str, str, Optional[tuple[str, ...]]], Any] = {}


def _onnx_runner(model: torch.nn.Module, name: str, kind: str, engine: str, device: torch.device, dtype: torch.dtype,
                 rewrites: Optional[tuple[str, ...]] = None) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """ONNX Runtime or OpenVINO on the CPU with torch's thread count, made on the first (warm-up) call at its input's
    size; int8 is calibrated on 4 seeded random batches of that shape (timing does not depend on the values). A file
    made for another case of the same ``name``, kind and rewrites is run again rather than made again.
    ONNX Runtime's threads do not spin between calls: spinning would take the CPU from the case timed next."""
    from ..engines import OnnxModel
    from ..int8 import onnx_model, quantize

    if device.type != "cpu" or dtype != torch.float32:
        raise ValueError(f"the ONNX modes run in float32 on the CPU, not {dtype} on {device.type}")
    made: dict[str, Callable] = {}
    key = (name, kind, rewrites)
    held = {"model": model}  # until the file is made: a table of many cases keeps only their engines' copies

    def infer(x: torch.Tensor, y: torch.Tensor) -> None:
        if "run" not in made:
            how = dict(threads=torch.get_num_threads(), engine=engine, spin=False)
            if key in _ONNX_FILES:
                made["run"] = OnnxModel(_ONNX_FILES[key].path, **how)
            elif kind == "fp32":
                made["run"] = onnx_model(held["model"], x, rewrites=rewrites, **how)
            else:
                gen = torch.Generator().manual_seed(1)
                batches = [torch.randn(x.shape, generator=gen) for _ in range(4)]
                made["run"] = quantize(held["model"], batches, keep_fp32=kind, rewrites=rewrites, **how)
            _ONNX_FILES.setdefault(key, made["run"])  # the first keeps its temporary folder alive
            held.clear()
        made["run"](x)

    return infer


def input_dtype(mode: str, dtype: torch.dtype) -> torch.dtype:
    # Inference runs the model in ``dtype``; training keeps float32 weights and inputs under autocast.
    return torch.float32 if MODES[mode]["train"] else dtype


def make_inputs(batch: int, size: int, channels_last: bool, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device, dtype)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x,
            torch.randint(0, 1000, (batch,), generator=gen).to(device))


# Far beyond any measurement worth making on one machine; past them the input tensor alone takes gigabytes (a side of
# 100,000 px asked for 120 GB) and the failure would be the allocator's traceback, not a sentence.
MAX_BENCH_BATCH, MAX_BENCH_SIDE = 4096, 4096


def grid(models: Sequence[str], modes: Sequence[str], batch_sizes: Sequence[int], sizes: Sequence[int],
         baseline: Optional[str] = "resnet50") -> list[BenchCase]:
    """Every (model, mode, batch, size), the baseline first; "deploy" does not apply to the baseline."""
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {tuple(MODES)}")
    for values, what, limit in ((batch_sizes, "batch size", MAX_BENCH_BATCH), (sizes, "resolution", MAX_BENCH_SIDE)):
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= limit]
        if bad:
            raise ValueError(f"every {what} must be an integer from 1 to {limit:,}, got {bad[0]}")
    names = list(dict.fromkeys([*([baseline] if baseline else []), *models]))
    return [BenchCase(n, m, b, s) for n in names for m in modes if not (m.startswith("deploy") and n == baseline)
            for s in sizes for b in batch_sizes]


