"""``scnet bench``: throughput, latency and peak memory, always side by side with torchvision's ResNet-50.

Why this shape: on shared or small machines absolute timings drift by tens of percent from one minute to the
next, so every configuration is built once and then timed round-robin (one call of each per round, several
rounds), and results are read as ratios within one run. Each model's achieved arithmetic rate is set against
the machine's measured matrix-multiply rate (the "roof"), which says how much speed is left to find.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import create_any_model
from .profile import describe_machine

__all__ = ["BenchCase", "MODES", "kernel_breakdown", "matmul_roof", "run_bench", "write_breakdown", "write_report"]

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
    "train": dict(channels_last=False, deploy=None, compile=False, train=True),
    "train_cl": dict(channels_last=True, deploy=None, compile=False, train=True),
    "train_compiled": dict(channels_last=True, deploy=None, compile=True, train=True),
}
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


def matmul_roof(device: torch.device, dtype: torch.dtype = torch.float32, n: Optional[int] = None, repeats: int = 5) -> float:
    """GFLOP/s of an n x n x n matrix multiply, the best of ``repeats``: the practical compute ceiling.

    n defaults to 2048 on CPU and 8192 on a GPU, where smaller products cannot fill the chip.
    """
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _child_peak(model: str, mode: str, batch: int, size: int, dtype: str, calls: int) -> float:
    """Run in a fresh process: peak resident memory of ``calls`` calls above the level after building (MB).

    The kernel's high-water mark (VmHWM) is reset just before the calls (``/proc/self/clear_refs``), so the
    transient peaks of importing and building do not count.
    """
    run = _prepare(model, mode, torch.device("cpu"), DTYPES[dtype])
    x, y = _make_inputs(batch, size, MODES[mode]["channels_last"], torch.device("cpu"), _input_dtype(mode, DTYPES[dtype]))
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for _ in range(calls):
        run(x, y)
    return max(0.0, (_status_kib("VmHWM") - base) / 1024)


def cpu_peak_memory(case: "BenchCase", dtype: str, calls: int = 2) -> Optional[float]:
    """Peak memory of ``case`` on CPU, measured in a fresh process so no other case's freed memory hides it.

    Inside one process, memory freed by earlier cases stays mapped and makes later peaks look small; a child
    process starts clean. The number is the high-water mark of resident memory during the calls minus the
    resident memory after the model and inputs were built (activations, workspaces, gradients, optimizer state).
    """
    import subprocess
    import sys

    if not os.path.exists("/proc/self/clear_refs"):  # Linux only
        return None
    code = ("import sys, torch; from scnet.bench import _child_peak; torch.set_num_threads(int(sys.argv[7])); "
            "print(_child_peak(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])))")
    args = [sys.executable, "-c", code, case.model, case.mode, str(case.batch), str(case.size), dtype, str(calls), str(torch.get_num_threads())]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return float(done.stdout.strip().splitlines()[-1])


def _prepare(name: str, mode: str, device: torch.device, dtype: torch.dtype) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """Build ``name`` for ``mode`` and return a function doing one timed call (inference or a training step)."""
    from .deploy import cuda_graph, deploy

    spec = MODES[mode]
    model = create_any_model(name).to(device)
    if spec["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    if spec["train"]:
        model.train()
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
    if spec["deploy"] is not None:  # a model without SC layers or our blocks comes back unfused, as a copy
        model = deploy(model, **spec["deploy"])
    if dtype != torch.float32:
        model = model.to(dtype)
    net = model
    if spec["compile"]:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # weights become constants: folded and pre-packed by the compiler
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


def _input_dtype(mode: str, dtype: torch.dtype) -> torch.dtype:
    # Inference runs the model in ``dtype``; training keeps float32 weights and inputs under autocast.
    return torch.float32 if MODES[mode]["train"] else dtype


def _make_inputs(batch: int, size: int, channels_last: bool, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device, dtype)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x,
            torch.randint(0, 1000, (batch,), generator=gen).to(device))


def grid(models: Sequence[str], modes: Sequence[str], batch_sizes: Sequence[int], sizes: Sequence[int],
         baseline: Optional[str] = "resnet50") -> list[BenchCase]:
    """Every (model, mode, batch, size), the baseline first; "deploy" does not apply to the baseline."""
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {tuple(MODES)}")
    for values, what in ((batch_sizes, "batch size"), (sizes, "resolution")):
        bad = [v for v in values if v < 1]
        if bad:
            raise ValueError(f"every {what} must be >= 1, got {bad[0]}")
    names = list(dict.fromkeys([*([baseline] if baseline else []), *models]))
    return [BenchCase(n, m, b, s) for n in names for m in modes if not (m.startswith("deploy") and n == baseline)
            for s in sizes for b in batch_sizes]


def run_bench(cases: Sequence[BenchCase], repeats: int = 5, warmup: int = 2, device: str = "cpu", dtype: str = "fp32",
              baseline: Optional[str] = "resnet50", show_progress: bool = True, memory: bool = True) -> dict[str, Any]:
    """Build each (model, mode) once, warm every case up, then time all cases round-robin ``repeats`` times.

    With ``memory``, each case's peak memory is measured too: on GPU from the allocator's statistics, on CPU
    in a fresh process per case (not for compiled modes, whose compilation would dominate that process).
    """
    from tqdm.auto import tqdm

    from .profile import count_macs

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {tuple(DTYPES)}")
    if repeats < 1 or warmup < 1:
        raise ValueError(f"repeats and warmup must be >= 1, got {repeats} and {warmup}")
    dev = _device(device)
    torch_dtype = DTYPES[dtype]
    runners: dict[tuple[str, str], Callable] = {}
    macs: dict[tuple[str, int], float] = {}
    inputs: dict[tuple[int, int, bool, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
    for case in cases:
        if (case.model, case.mode) not in runners:
            runners[case.model, case.mode] = _prepare(case.model, case.mode, dev, torch_dtype)
        if (case.model, case.size) not in macs:
            with torch.device("meta"):
                macs[case.model, case.size] = count_macs(create_any_model(case.model), (3, case.size, case.size))
        case.macs = macs[case.model, case.size]
    def input_key(case: BenchCase) -> tuple[int, int, bool, torch.dtype]:
        return case.batch, case.size, MODES[case.mode]["channels_last"], _input_dtype(case.mode, torch_dtype)

    for case in cases:
        if input_key(case) not in inputs:
            inputs[input_key(case)] = _make_inputs(*input_key(case)[:3], dev, input_key(case)[3])

    def call(case: BenchCase) -> tuple[Callable, torch.Tensor, torch.Tensor]:
        return (runners[case.model, case.mode], *inputs[input_key(case)])

    total = len(cases) * (warmup + repeats)
    with tqdm(total=total, desc="bench", disable=not show_progress or None, dynamic_ncols=True) as bar:
        for case in cases:  # warm-up (and compilation) first, memory measured on the last warm-up call
            run, x, y = call(case)
            try:
                for i in range(warmup):
                    if i == warmup - 1 and dev.type == "cuda":
                        case.peak_mem_mb = _cuda_peak_memory(run, x, y, dev)
                    else:
                        run(x, y)
                    _sync(dev)
                    bar.update()
            except Exception as err:  # one failing configuration is reported, the rest still measured
                case.error = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                bar.update(warmup - i)
        for _ in range(repeats):
            for case in cases:
                if case.error:
                    bar.update()
                    continue
                run, x, y = call(case)
                _sync(dev)
                start = time.perf_counter()
                run(x, y)
                _sync(dev)
                case.times.append(time.perf_counter() - start)
                bar.update()
    if memory and dev.type == "cpu":
        for case in tqdm(cases, desc="peak memory", disable=not show_progress or None, dynamic_ncols=True):
            if not case.error and not MODES[case.mode]["compile"]:
                case.peak_mem_mb = cpu_peak_memory(case, dtype, calls=warmup)
    roof = matmul_roof(dev, torch_dtype if torch_dtype != torch.float16 or dev.type == "cuda" else torch.float32)
    return dict(
        machine=describe_machine(dev), torch=torch.__version__, device=device, dtype=dtype,
        repeats=repeats, warmup=warmup, baseline=baseline, matmul_roof_gflops=roof, memory=memory,
        results=[c.summary(roof) for c in cases],
    )


def _device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but no GPU is visible")
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest algorithm per shape
    return dev


def _cuda_peak_memory(run: Callable, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run(x, y)
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _describe_mode(spec: dict[str, Any]) -> str:
    parts = ["training step" if spec["train"] else "inference", "channels_last" if spec["channels_last"] else "NCHW"]
    if spec["deploy"] is not None:
        parts.append(f"deploy(backend={spec['deploy']['backend']})")
    if spec["compile"]:
        parts.append("torch.compile" + ("" if spec["train"] else " with freezing"))
    if spec.get("graph"):
        parts.append("CUDA graph replay")
    return " + ".join(parts)


def _memory_note(device: str) -> str:
    if device.startswith("cuda"):
        return ("Peak memory: the CUDA allocator's peak during the last warm-up call, above what was allocated before it "
                "(cuDNN's workspace included).")
    return ("Peak memory: the resident-memory high-water mark (reset just before) of the warm-up calls in a fresh "
            "process, above the memory after building the model and inputs.")


def _md_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | mode | batch | size | img/s | latency ms (median) | spread % | GFLOP/s | of roof | peak mem MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['model']} | {r['mode']} | {r['batch']} | {r['size']} | failed: {r['error']} | | | | | |")
            continue
        mem = f"{r['peak_mem_mb']:.0f}" if r.get("peak_mem_mb") is not None else "n/a"
        lines.append(f"| {r['model']} | {r['mode']} | {r['batch']} | {r['size']} | {r['images_per_s']:.2f} | {r['latency_ms']:.1f} | "
                     f"{r['spread_pct']:.0f} | {r.get('gflops', 0):.1f} | {100 * r.get('roof_fraction', 0):.0f}% | {mem} |")
    return lines


def write_report(report: dict[str, Any], out: Path, command: str = "", extra_md: Sequence[str] = ()) -> None:
    """bench.json, bench.md and bench.png (img/s against batch size and against resolution) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    report = {**report, "command": command}
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Benchmark: {report['dtype']} on {report['device']}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [f"Machine: {report['machine']}. Measured matmul roof: {report['matmul_roof_gflops']:.0f} GFLOP/s. "
              f"{report['warmup']} warm-up calls, {report['repeats']} timed rounds (round-robin over all rows); "
              "spread = (max - min) / median. " + _memory_note(report["device"]) + " Modes: " + "; ".join(
                  f"{m} = {_describe_mode(spec)}" for m, spec in MODES.items() if any(r["mode"] == m for r in report["results"])) + ".",
              "", *extra_md, *_md_table(report["results"]), "", "![scaling](bench.png)", ""]
    (out / "bench.md").write_text("\n".join(lines))
    _plot(report, out / "bench.png")


def _plot(report: dict[str, Any], path: Path) -> None:
    """img/s against batch size and against resolution: one panel per axis that was varied, one legend beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if not r.get("error")]
    series = sorted({(r["model"], r["mode"]) for r in rows})
    models = sorted({m for m, _ in series})
    panels = [p for p in (("batch", "size", "batch size"), ("size", "batch", "resolution (px)")) if len({r[p[0]] for r in rows}) > 1]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.2 * max(1, len(panels)) + 3.2, 4.4), squeeze=False)
    if not panels:
        axes[0][0].text(0.5, 0.5, "one batch size and one resolution measured: no scaling to plot", ha="center", va="center")
        axes[0][0].set_axis_off()
    colors = plt.get_cmap("tab20" if len(series) > 10 else "tab10")
    for ax, (axis, fixed, label) in zip(axes[0], panels):
        # Hold the other axis where the most points vary along this one.
        fixed_value = max(sorted({r[fixed] for r in rows}), key=lambda v: len({r[axis] for r in rows if r[fixed] == v}))
        for i, (model, mode) in enumerate(series):
            pts = sorted((r[axis], r["images_per_s"]) for r in rows if (r["model"], r["mode"]) == (model, mode) and r[fixed] == fixed_value)
            if pts:  # a colour per series, a marker per model, the baseline dashed
                ax.plot(*zip(*pts), marker="os^Dv"[models.index(model) % 5], label=f"{model} ({mode})", color=colors(i % colors.N),
                        linestyle="--" if model == report["baseline"] else "-")
        ax.set(xlabel=label, ylabel="images / s", title=f"img/s vs {label} ({fixed} = {fixed_value})")
        ax.set_xscale("log", base=2)
        values = sorted({r[axis] for r in rows})
        ax.set_xticks(values, [str(v) for v in values])
        ips = [r["images_per_s"] for r in rows]
        if max(ips) > 20 * min(ips):  # GPUs span orders of magnitude from batch 1 to large batches
            ax.set_yscale("log")
        ax.minorticks_off()
        ax.grid(alpha=0.3, which="both")
    if panels:  # one legend for all panels: a series has the same colour and marker in each
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(f"{report['machine'][:90]}", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1 - 3.0 / fig.get_figwidth(), 1) if panels else None)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# The fast-path goals, each as (description, numerator case, denominator case, how the ratio is read, bound).
# A case is (model, mode, batch, size); the ratio is throughput(numerator) / throughput(denominator) unless noted.
TARGETS: list[dict[str, Any]] = [
    dict(goal="deploy(scnet50) vs scnet50 eager, batch 1", num=("scnet50", "deploy", 1, 224), den=("scnet50", "eager", 1, 224), min=1.5),
    dict(goal="deploy(scnet50) vs scnet50 eager, batch 8", num=("scnet50", "deploy", 8, 224), den=("scnet50", "eager", 8, 224), min=1.3),
    dict(goal="deploy(scnet50) vs resnet50 eager, both channels_last, batch 8", num=("scnet50", "deploy", 8, 224),
         den=("resnet50", "eager_cl", 8, 224), min=1.15),
    dict(goal="compiled deploy(scnet50) vs compiled resnet50 (inductor, freezing, channels_last), batch 8",
         num=("scnet50", "compiled", 8, 224), den=("resnet50", "compiled", 8, 224), min=1.05),
    dict(goal="scnet50 training step, channels_last vs official-equivalent eager (NCHW), batch 8",
         num=("scnet50", "train_cl", 8, 224), den=("scnet50", "train", 8, 224), min=1.1),
    dict(goal="scnet50 training peak memory / resnet50's (same mode, channels_last), batch 8", num=("scnet50", "train_cl", 8, 224),
         den=("resnet50", "train_cl", 8, 224), max=1.0, metric="peak_mem_mb"),
    dict(goal="deploy(scnet50) latency growth 224 -> 448 px, batch 1", num=("scnet50", "deploy", 1, 448), den=("scnet50", "deploy", 1, 224),
         max=4.3, metric="latency_ms"),
    dict(goal="deploy(scnet50) throughput batch 32 / batch 1", num=("scnet50", "deploy", 32, 224), den=("scnet50", "deploy", 1, 224), min=1.0),
]


def target_cases() -> list[BenchCase]:
    """The distinct cases the targets need, in a fixed order."""
    keys = list(dict.fromkeys(c for t in TARGETS for c in (t["den"], t["num"])))
    return [BenchCase(*k) for k in keys]


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured ratio and whether it is met (None when a case is missing or failed)."""
    rows = {(r["model"], r["mode"], r["batch"], r["size"]): r for r in report["results"]}
    out = []
    for t in TARGETS:
        num, den = rows.get(t["num"]), rows.get(t["den"])
        metric = t.get("metric", "images_per_s")
        ratio = None
        if num and den and num.get(metric) is not None and den.get(metric):
            ratio = num[metric] / den[metric]
        met = None if ratio is None else (ratio >= t["min"] if "min" in t else ratio <= t["max"])
        bound = f">= {t['min']}" if "min" in t else f"<= {t['max']}"
        out.append(dict(goal=t["goal"], metric=metric, ratio=ratio, bound=bound, met=met,
                        num=num.get(metric) if num else None, den=den.get(metric) if den else None))
    return out


def targets_markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Targets", "", "| goal | measured | ratio | target | met |", "|---|---|---|---|---|"]
    for r in rows:
        unit = {"images_per_s": "img/s", "latency_ms": "ms", "peak_mem_mb": "MB"}[r["metric"]]
        measured = f"{r['num']:.1f} vs {r['den']:.1f} {unit}" if r["ratio"] is not None else "not measured"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        met = {True: "yes", False: "**no**", None: "-"}[r["met"]]
        lines.append(f"| {r['goal']} | {measured} | {ratio} | {r['bound']} | {met} |")
    return lines + [""]


# Where the time goes: kernel (GPU) or operator (CPU) names, lower-cased, sorted into categories by the first
# category with a matching substring. Batch norm comes before convolution because cuDNN names its norm kernels
# "cudnn::bn_*"; concatenation before copy; the Triton gate kernel first.
KERNEL_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("calibration gate (Triton)", ("gate_product",)),
    ("batch norm", ("batch_norm", "bn_fw", "bn_bw", "batchnorm")),
    ("layout change", ("nchwtonhwc", "nhwctonchw", "transpose")),
    ("convolution", ("convolution", "conv2d", "fprop", "dgrad", "wgrad", "xmma", "implicit", "gemm", "cutlass",
                     "winograd", "cudnn", "sm90_", "sm80_")),
    ("average pool", ("avg_pool",)),
    ("upsample", ("upsample",)),
    ("sigmoid", ("sigmoid",)),
    ("multiply", ("mul",)),
    ("add", ("add",)),
    ("relu", ("relu", "clamp", "threshold")),
    ("concat", ("cat",)),
    ("copy", ("copy",)),
]


def kernel_category(name: str) -> str:
    low = name.lower()
    return next((cat for cat, keys in KERNEL_CATEGORIES if any(k in low for k in keys)), "other")


def kernel_breakdown(case: BenchCase, device: str = "cpu", dtype: str = "fp32", calls: int = 3, warmup: int = 2) -> dict[str, Any]:
    """Time per kernel (GPU) or per operator's own time (CPU) over ``calls`` calls of ``case``, by category.

    Why: a speed-up is only worth building where the time is. On a GPU the profiler records every kernel
    with its device time (read from the exported trace, a format stable across PyTorch versions); on CPU the
    operators' self time stands in, since oneDNN runs inside them.
    """
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {tuple(DTYPES)}")
    dev = _device(device)
    run = _prepare(case.model, case.mode, dev, DTYPES[dtype])
    x, y = _make_inputs(case.batch, case.size, MODES[case.mode]["channels_last"], dev, _input_dtype(case.mode, DTYPES[dtype]))
    for _ in range(warmup):
        run(x, y)
    _sync(dev)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            run(x, y)
        _sync(dev)
    totals: dict[str, list[float]] = {}  # name -> [microseconds, launches]
    if dev.type == "cuda":
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(path))
            events = json.loads(path.read_text()).get("traceEvents", [])
        for ev in events:
            if ev.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
                t = totals.setdefault(ev["name"], [0.0, 0])
                t[0] += float(ev.get("dur", 0.0))
                t[1] += 1
    else:
        for row in prof.key_averages():
            if row.self_cpu_time_total > 0:
                totals[row.key] = [float(row.self_cpu_time_total), row.count]
    kernels = sorted(({"name": k, "category": kernel_category(k), "us_per_call": v[0] / calls, "launches_per_call": v[1] / calls}
                      for k, v in totals.items()), key=lambda k: -k["us_per_call"])
    total = sum(k["us_per_call"] for k in kernels)
    cats: dict[str, list[float]] = {}
    for k in kernels:
        c = cats.setdefault(k["category"], [0.0, 0.0])
        c[0] += k["us_per_call"]
        c[1] += k["launches_per_call"]
    categories = sorted(({"category": c, "us_per_call": v[0], "share": v[0] / total if total else 0.0, "launches_per_call": v[1]}
                         for c, v in cats.items()), key=lambda c: -c["us_per_call"])
    return dict(model=case.model, mode=case.mode, batch=case.batch, size=case.size, device=device, dtype=dtype, calls=calls,
                total_us_per_call=total, launches_per_call=sum(k["launches_per_call"] for k in kernels),
                categories=categories, top=kernels[:40])


def write_breakdown(rows: list[dict[str, Any]], out: Path, command: str = "") -> None:
    """breakdown.json and breakdown.md (one row per case, one column per category: ms per call and share)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "breakdown.json").write_text(json.dumps(dict(command=command, machine=describe_machine(_device(rows[0]["device"])) if rows else "",
                                                        rows=rows), indent=2))
    order = list(dict.fromkeys(c["category"] for r in rows for c in r["categories"]))
    unit = "kernel time" if rows and rows[0]["device"].startswith("cuda") else "operator self time"
    lines = [f"# Where the time goes ({unit} per call)", ""] + ([f"Command: `{command}`", ""] if command else [])
    lines += ["| model | mode | batch | size | total ms | launches | " + " | ".join(order) + " |",
              "|---|---|---|---|---|---|" + "---|" * len(order)]
    for r in rows:
        share = {c["category"]: c for c in r["categories"]}
        cells = [f"{share[c]['us_per_call'] / 1e3:.2f} ({100 * share[c]['share']:.0f}%)" if c in share else "" for c in order]
        lines.append(f"| {r['model']} | {r['mode']} | {r['batch']} | {r['size']} | {r['total_us_per_call'] / 1e3:.2f} | "
                     f"{r['launches_per_call']:.0f} | " + " | ".join(cells) + " |")
    (out / "breakdown.md").write_text("\n".join(lines + [""]))
