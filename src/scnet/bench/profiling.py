"""Where the time goes: ``scnet bench --breakdown`` profiles a case and sorts its kernels (GPU) or operators
(CPU) into categories, so that a speed-up is built where the time is."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..profile import describe_machine
from .cases import DTYPES, MODES, BenchCase, input_dtype, make_inputs, prepare, torch_settings
from .timing import bench_device, sync

__all__ = ["KERNEL_CATEGORIES", "kernel_breakdown", "kernel_category", "write_breakdown"]


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
    from torch.profiler import ProfilerActivity, profile

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {tuple(DTYPES)}")
    dev = bench_device(device)
    with torch_settings(dev, freezing=MODES[case.mode]["compile"] and not MODES[case.mode]["train"]):
        run = prepare(case.model, case.mode, dev, DTYPES[dtype])
        x, y = make_inputs(case.batch, case.size, MODES[case.mode]["channels_last"], dev, input_dtype(case.mode, DTYPES[dtype]))
        for _ in range(warmup):
            run(x, y)
        sync(dev)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(calls):
                run(x, y)
            sync(dev)
    kernels = sorted(({"name": k, "category": kernel_category(k), "us_per_call": v[0] / calls, "launches_per_call": v[1] / calls}
                      for k, v in _totals(prof, dev).items()), key=lambda k: -k["us_per_call"])
    total = sum(k["us_per_call"] for k in kernels)
    return dict(model=case.model, mode=case.mode, batch=case.batch, size=case.size, device=device, dtype=dtype, calls=calls,
                total_us_per_call=total, launches_per_call=sum(k["launches_per_call"] for k in kernels),
                categories=_categories(kernels, total), top=kernels[:40])


def _totals(prof: Any, dev: torch.device) -> dict[str, list[float]]:
    """name -> [microseconds, launches] over the profiled calls: GPU kernels from the exported trace (a format
    stable across PyTorch versions), else the CPU operators' self time."""
    totals: dict[str, list[float]] = {}
    if dev.type != "cuda":
        return {row.key: [float(row.self_cpu_time_total), row.count] for row in prof.key_averages() if row.self_cpu_time_total > 0}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text()).get("traceEvents", [])
    for ev in events:
        if ev.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            t = totals.setdefault(ev["name"], [0.0, 0])
            t[0] += float(ev.get("dur", 0.0))
            t[1] += 1
    return totals


def _categories(kernels: list[dict[str, Any]], total: float) -> list[dict[str, Any]]:
    cats: dict[str, list[float]] = {}
    for k in kernels:
        c = cats.setdefault(k["category"], [0.0, 0.0])
        c[0] += k["us_per_call"]
        c[1] += k["launches_per_call"]
    return sorted(({"category": c, "us_per_call": v[0], "share": v[0] / total if total else 0.0, "launches_per_call": v[1]}
                   for c, v in cats.items()), key=lambda c: -c["us_per_call"])


def write_breakdown(rows: list[dict[str, Any]], out: Path, command: str = "") -> None:
    """breakdown.json and breakdown.md (one row per case, one column per category: ms per call and share)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "breakdown.json").write_text(json.dumps(dict(command=command, machine=describe_machine(torch.device(rows[0]["device"])) if rows else "",
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
