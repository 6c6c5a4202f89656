"""The report of a learning curve (``scnet compare --train-sizes``): report.json, report.md and report.png."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..files import write_text_atomically
from .config import TrainConfig
from .curve_stats import BOOTSTRAP_DRAWS

__all__ = ["describe_multiplier", "write_curve_report"]

COLORS = ("tab:gray", "tab:blue")  # plain twin, SC model: as in every study figure


def write_curve_report(out: Path, report: dict[str, Any]) -> None:
    write_text_atomically(out / "report.json", json.dumps(report, indent=2))
    if report["curve"]["points"]:
        plot_curve(out / "report.png", report)
    write_text_atomically(out / "report.md", _markdown(report))


def _interval(block: dict[str, Any], sign: str = "") -> str:
    """``mean [low, high]`` (one seed: the value alone, marked)."""
    if block["ci95"] is None:
        return f"{block['mean']:{sign}.2f} (1 seed)"
    low, high = block["ci95"]
    return f"{block['mean']:{sign}.2f} [{low:{sign}.2f}, {high:{sign}.2f}]"


def _times(value: float, bound: str) -> str:
    return {"=": "", "<=": "≤ ", ">": "> "}[bound] + f"{value:.2f}x"


def describe_multiplier(multiplier: dict[str, Any]) -> str:
    """``1.8x [1.3x, 2.6x]``, with ≤ / > where the curve only bounds a value."""
    return (f"{_times(multiplier['multiplier'], multiplier['bound'])} "
            f"[{_times(multiplier['low'], multiplier['low_bound'])}, {_times(multiplier['high'], multiplier['high_bound'])}]")


def _markdown(report: dict[str, Any]) -> str:
    plain, sc = report["names"]
    curve = report["curve"]
    lines = [f"# Learning curve: {sc} vs {plain} (its plain twin) on {report['data']}, paired by seed", ""]
    if report["command"]:
        lines += [f"Command: `{report['command']}`", ""]
    defaults = TrainConfig().to_dict()
    recipe = ", ".join(f"{k}={v}" for k, v in report["recipe"].items() if v != defaults.get(k) or k in ("epochs", "batch_size"))
    lines += [f"Machine: {report['machine']}. Recipe: {recipe}.", "",
              f"Every run takes the same {report['steps_per_run']:,} optimiser steps ({report['epochs']} epochs of "
              f"{report['train_images']:,} images, {report['images_per_run']:,} images seen), whatever its training-set size: "
              f"a size N is a random subset of the {report['train_images']:,} training images (each class its share, drawn "
              f"with the run's seed, each size's subset inside the larger ones), each image seen about "
              f"{report['images_per_run']:,}/N times. Only the data varies. Accuracies are the final epoch's, on the test set.",
              ""]
    lines += _table(report) + [""]
    if curve["points"]:
        lines += _findings(report) + [""]
        lines += ["![accuracy against training-set size, paired differences and data multiplier](report.png)", ""]
    lines += _localization(report)
    lines += ["Per-seed values: `report.json` here, and each size's `n<size>/report.md`.", ""]
    if report["status"] != "done":
        lines += [f"In progress: {curve['pairs']} pair(s) so far.", ""]
    return "\n".join(lines) + "\n"


def _table(report: dict[str, Any]) -> list[str]:
    plain, sc = report["names"]
    lines = [f"| training images | pairs | {plain} (%), 95 % CI | {sc} (%), 95 % CI | SC - plain (points), 95 % CI | "
             f"data multiplier, 95 % interval |", "|---|---|---|---|---|---|"]
    for p in report["curve"]["points"]:
        lines.append(f"| {p['size']:,} | {len(p['seeds'])} | {_interval(p['plain'])} | {_interval(p['sc'])} | "
                     f"{_interval(p['diff'], '+')} | {describe_multiplier(p['multiplier'])} |")
    return lines


def _findings(report: dict[str, Any]) -> list[str]:
    curve = report["curve"]
    largest = next(p for p in curve["points"] if p["size"] == curve["largest_difference_at"])
    return [f"**Data multiplier**: how many training images the plain twin needs to reach the accuracy SC reaches with N, "
            f"as a multiple of N, read off the plain twin's mean curve interpolated linearly in log N between the measured "
            f"sizes; its interval holds the 2.5-97.5 % percentiles over {BOOTSTRAP_DRAWS} resamples of each size's pairs. "
            f"\"≤\": the plain twin's smallest size already gets there; \">\": its largest size does not (the curve only "
            f"bounds the value).", "",
            f"The largest mean difference is at {largest['size']:,} images: {_interval(largest['diff'], '+')} points; the "
            f"data multiplier there is {describe_multiplier(largest['multiplier'])}."]


def _localization(report: dict[str, Any]) -> list[str]:
    """Per size, each localization score's paired difference (the test set knows its objects' boxes)."""
    blocks = report.get("localization") or []
    if not blocks:
        return []
    names = list(blocks[0]["metrics"])
    lines = ["## Localization per size (Grad-CAM of the true class against the object's box, every test image)", "",
             "| training images | pairs | " + " | ".join(f"{blocks[0]['metrics'][k]['name']}: plain, SC, SC - plain [95 % CI]"
                                                        for k in names) + " |", "|---|---|" + "---|" * len(names)]
    for block in blocks:
        cells = []
        for key in names:
            m = block["metrics"][key]
            diff = dict(mean=m["mean_diff"], ci95=m["ci95"])
            cells.append(f"{m['plain_mean']:.2f}, {m['sc_mean']:.2f}, {_interval(diff, '+')}")
        lines.append(f"| {block['size']:,} | {len(block['metrics'][names[0]]['pairs'])} | " + " | ".join(cells) + " |")
    return lines + ["", "Pointing: share of test images whose Grad-CAM peak lies in the box; energy: mean share of the "
                        "Grad-CAM's mass in the box (each size's `n<size>/report.md` has the per-seed values).", ""]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curve(path: Path, report: dict[str, Any], title: Optional[str] = None) -> None:
    """Accuracy against training-set size (log axis, 95 % intervals, every seed faint); the paired difference per
    size; the data multiplier per size with its interval (a triangle where the curve only bounds it)."""
    plt = _pyplot()
    with plt.rc_context({"font.size": 12, "axes.titlesize": 13, "legend.fontsize": 11}):
        fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
        draw_accuracy(axes[0], report)
        draw_difference(axes[1], report)
        draw_multiplier(axes[2], report)
        fig.suptitle(title or f"{report['names'][1]} vs {report['names'][0]} on {report['data']}: "
                              f"{report['curve']['pairs']} pairs, {report['images_per_run']:,} images seen per run", fontsize=14)
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)


def _short(n: float) -> str:
    """12,500 -> 12.5k: a size as a tick label."""
    return f"{n / 1000:g}k" if n >= 1000 else f"{n:g}"


def _size_axis(ax: Any, sizes: list[int], label: str = "training images (log scale)") -> None:
    """A log axis ticked at the measured sizes, in plain numbers."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(sizes)
    ax.set_xticklabels([_short(n) for n in sizes])
    ax.set_xlabel(label)


def _errors(blocks: list[dict[str, Any]]) -> list[float]:
    return [b["half_width"] if b["half_width"] is not None else 0.0 for b in blocks]


def draw_accuracy(ax: Any, report: dict[str, Any]) -> None:
    points = report["curve"]["points"]
    sizes = [p["size"] for p in points]
    for key, name, color in zip(("plain", "sc"), report["names"], COLORS):
        for p in points:
            ax.scatter([p["size"]] * len(p[f"{key}_values"]), p[f"{key}_values"], color=color, alpha=0.3, s=14, zorder=2)
        blocks = [p[key] for p in points]
        ax.errorbar(sizes, [b["mean"] for b in blocks], yerr=_errors(blocks), fmt="o-", color=color, capsize=4, lw=2,
                    label=f"{name} (mean, 95 % CI)", zorder=3)
    _size_axis(ax, sizes)
    seeds = [v for p in points for key in ("plain", "sc") for v in p[f"{key}_values"]]
    _data_range(ax, [b for p in points for b in (p["plain"], p["sc"])], max(0.0, min(seeds) - 8), min(100.5, max(seeds) + 8))
    ax.set(ylabel="test top-1 (%)", title="accuracy against training-set size")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")


def _data_range(ax: Any, blocks: list[dict[str, Any]], low: float, high: float) -> None:
    """The value axis over the seeds' values, not the intervals: with two or three seeds a Student interval can span
    hundreds of points (t = 12.7 for two), which would flatten every curve. Intervals cut at the axis are said so."""
    ax.set_ylim(low, high)
    cut = any(b.get("ci95") and (b["ci95"][0] < low or b["ci95"][1] > high) for b in blocks)
    if cut:
        ax.text(0.01, 0.01, "intervals beyond the axis are cut", transform=ax.transAxes, fontsize=8, color="0.35",
                va="bottom", ha="left")


def draw_difference(ax: Any, report: dict[str, Any]) -> None:
    points = report["curve"]["points"]
    ax.axhline(0.0, color="black", lw=1)
    for p in points:
        diffs = [b - a for a, b in zip(p["plain_values"], p["sc_values"])]
        ax.scatter([p["size"]] * len(diffs), diffs, color="tab:blue", alpha=0.35, s=14, zorder=2)
    blocks = [p["diff"] for p in points]
    ax.errorbar([p["size"] for p in points], [b["mean"] for b in blocks], yerr=_errors(blocks), fmt="D", color="tab:red",
                capsize=5, lw=2, zorder=3, label="mean, 95 % t-interval (dots: seeds)")
    _size_axis(ax, [p["size"] for p in points])
    span = 1.4 * max(abs(b - a) for p in points for a, b in zip(p["plain_values"], p["sc_values"])) + 1.0
    _data_range(ax, blocks, -span, span)
    ax.set(ylabel="SC - plain (points)", title="paired difference per size")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")


def draw_multiplier(ax: Any, report: dict[str, Any]) -> None:
    ax.axhline(1.0, color="black", lw=1)
    for p in report["curve"]["points"]:
        m = p["multiplier"]
        marker = {"=": "o", "<=": "v", ">": "^"}[m["bound"]]
        ax.plot([p["size"], p["size"]], [m["low"], m["high"]], color="tab:purple", lw=2, alpha=0.7)
        ax.scatter([p["size"]], [m["multiplier"]], marker=marker, color="tab:purple", s=60, zorder=3)
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator

    _size_axis(ax, [p["size"] for p in report["curve"]["points"]], "training images of SC, N (log scale)")
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ticks = [t for t in (0.125, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4, 6, 8, 16, 32) if low <= t <= high]
    ax.yaxis.set_major_locator(FixedLocator(ticks) if len(ticks) >= 2 else LogLocator(base=2))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set(ylabel="images the plain twin needs / N", title="data multiplier (▲ more than, ▼ at most)")
    ax.grid(alpha=0.3, which="both")
