"""The reports of ``scnet bench``: bench.json, bench.md (a table with the machine and the modes described) and
bench.png (img/s against batch size and against resolution)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .cases import MODES

__all__ = ["describe_mode", "write_report"]


def describe_mode(spec: dict[str, Any]) -> str:
    parts = ["training step" if spec["train"] else "inference", "channels_last" if spec["channels_last"] else "NCHW"]
    if spec["deploy"] is not None:
        parts.append(f"deploy(backend={spec['deploy']['backend']})")
    if spec["compile"]:
        parts.append("torch.compile" + ("" if spec["train"] else " with freezing"))
    if spec.get("graph"):
        parts.append("CUDA graph replay")
    if spec.get("onnx"):
        engine = "OpenVINO" if spec.get("engine") == "openvino" else "ONNX Runtime"
        parts.append(engine + ("" if spec["onnx"] == "fp32" else f" int8 (kept in float: {spec['onnx']})"))
    return " + ".join(parts)


def _memory_note(device: str) -> str:
    if device.startswith("cuda"):
        return ("Peak memory: the CUDA allocator's peak during the last warm-up call, above what was allocated before it "
                "(cuDNN's workspace included).")
    return ("Peak memory: the resident-memory high-water mark (reset just before) of the warm-up calls in a fresh "
            "process, above the memory after building the model and inputs; blocks of 64 KiB or more are mapped directly "
            "there, so that the figure follows the live tensors rather than what the allocator keeps.")


def _malloc_note(report: dict[str, Any]) -> str:
    if not report.get("freed_memory_kept"):
        return ""
    return (" Timed with glibc keeping freed memory for reuse (`--keep-freed-memory`, as `scnet train` runs on a CPU), "
            "so that no call page-faults its activations anew.")


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


def _side_by_side(rows: list[dict[str, Any]], baseline: str) -> list[str]:
    """Each model beside the baseline measured in the same mode, batch and size: throughput, roof and memory."""
    ok = [r for r in rows if not r.get("error")]
    base = {(r["mode"], r["batch"], r["size"]): r for r in ok if r["model"] == baseline}
    pairs = [(r, base[(r["mode"], r["batch"], r["size"])]) for r in ok if r["model"] != baseline and (r["mode"], r["batch"], r["size"]) in base]
    if not pairs:
        return []
    lines = [f"## Beside {baseline}", "", f"| model | mode | batch | size | img/s (model / {baseline}) | ratio | of roof | "
             f"peak mem MB | memory ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for r, b in pairs:
        mem, mem_ratio = "n/a", "-"
        if r.get("peak_mem_mb") is not None and b.get("peak_mem_mb"):
            mem, mem_ratio = f"{r['peak_mem_mb']:.0f} / {b['peak_mem_mb']:.0f}", f"{r['peak_mem_mb'] / b['peak_mem_mb']:.2f}x"
        lines.append(f"| {r['model']} | {r['mode']} | {r['batch']} | {r['size']} | {r['images_per_s']:.2f} / {b['images_per_s']:.2f} | "
                     f"{r['images_per_s'] / b['images_per_s']:.2f}x | {100 * r.get('roof_fraction', 0):.0f}% / "
                     f"{100 * b.get('roof_fraction', 0):.0f}% | {mem} | {mem_ratio} |")
    return lines + [""]


def write_report(report: dict[str, Any], out: Path, command: str = "", extra_md: Sequence[str] = ()) -> None:
    """bench.json, bench.md and bench.png (img/s against batch size and against resolution) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    report = {**report, "command": command}
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Benchmark: {report['dtype']} on {report['device']}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [f"Machine: {report['machine']}. Measured matmul roof: {report['matmul_roof_gflops']:.0f} GFLOP/s. "
              f"{report['warmup']} warm-up calls, {report['repeats']} timed rounds (round-robin over all rows, each timed call "
              f"after {report.get('settle', 0)} untimed calls of the same case); "
              "spread = (max - min) / median. " + _memory_note(report["device"]) + _malloc_note(report) + " Modes: " + "; ".join(
                  f"{m} = {describe_mode(spec)}" for m, spec in MODES.items() if any(r["mode"] == m for r in report["results"])) + ".",
              "", *extra_md, *_side_by_side(report["results"], report["baseline"]), "## All rows", "",
              *_md_table(report["results"]), "", "![scaling](bench.png)", ""]
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


