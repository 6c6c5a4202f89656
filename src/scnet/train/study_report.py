"""The report of a paired-seed study: report.json, report.md, report.png and, with localization, localization.png."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Sequence

from ..files import write_text_atomically
from .config import TrainConfig
from .study_stats import describe_difference, study_finished

__all__ = ["RECIPE_KEYS", "write_report"]

def write_report(out: Path, report: dict[str, Any]) -> None:
    write_text_atomically(out / "report.json", json.dumps(report, indent=2))
    _plot(out / "report.png", report)
    if len(report.get("metrics", {})) > 1:
        _plot_localization(out / "localization.png", report)
    write_text_atomically(out / "report.md", _markdown(report))


# The recipe keys every report shows, whether or not they are defaults (the defaults may change later).
RECIPE_KEYS = ("data", "epochs", "batch_size", "opt", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs",
               "label_smoothing", "channels_last", "amp", "limit_train", "limit_val")


def _markdown(report: dict[str, Any]) -> str:
    """One page: how it was made, the models, the pairs, the difference and verdict, the figure, the ERF."""
    plain, sc = report["models"]
    defaults = TrainConfig().to_dict()
    changed = {k: v for k, v in report["recipe"].items() if v != defaults.get(k)}
    lines = [f"# {sc} vs {plain} (its plain twin) on {report['data']}, paired by seed", ""]
    if report["command"]:
        lines += [f"Command: `{report['command']}`", ""]
    shown = {k: report["recipe"][k] for k in RECIPE_KEYS if k in report["recipe"]}
    shown.update({k: v for k, v in changed.items() if k not in shown})
    threads = report.get("threads_per_process")
    lines += [f"Machine: {report['machine']}"
              + (f"; every training process ran {' or '.join(map(str, threads))} torch thread(s)" if threads else "") + ". "
              f"Recipe: {', '.join(f'{k}={v}' for k, v in shown.items())}.", ""]
    lines += _model_table(report) + [""] + _pair_table(report) + [""]
    lines += [describe_difference(report), ""] + _stopping_lines(report)
    if report.get("other_seeds"):
        lines += [f"This folder also holds the finished pairs of seed(s) {', '.join(map(str, report['other_seeds']))}, which this "
                  f"report leaves out: name them in --seeds to include them.", ""]
    lines += ["![per-seed accuracy, paired differences and validation curves](report.png)", ""]
    lines += _localization_lines(report)
    if "erf" in report:
        lines += _erf_lines(report)
    return "\n".join(lines) + "\n"


def _localization_lines(report: dict[str, Any]) -> list[str]:
    """Per seed, both models' localization scores and their differences; the interval and verdict of each."""
    keys = [k for k in report.get("metrics", {}) if k != "final_val_acc"]
    if not keys:
        return []
    plain, sc = report["models"]
    blocks = [report["metrics"][k] for k in keys]
    names = [b["name"] for b in blocks]
    lines = ["## Localization: the true class's Grad-CAM against the object's box, on every test image", "",
             "Pointing: the share of test images whose Grad-CAM peak lies inside the object's box (the pointing game). "
             "Energy: the mean share of the Grad-CAM's mass inside the box. Both of the true class, at the last stage, for "
             "each run's final weights.", "",
             "| seed | " + " | ".join(f"{n}: {plain} | {n}: {sc} | {n}: SC - plain" for n in names) + " |",
             "|---|" + "---|---|---|" * len(blocks)]
    for i, seed in enumerate(p["seed"] for p in blocks[0]["pairs"]):
        cells = [f"{b['pairs'][i]['plain']:.2f} | {b['pairs'][i]['sc']:.2f} | {b['pairs'][i]['diff']:+.2f}" for b in blocks]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, block in zip(names, blocks):
        lines += [f"**{name}** ({block['label']}): {plain} {block['plain_mean']:.2f}, {sc} {block['sc_mean']:.2f}. "
                  + describe_difference(block), ""]
    lines += ["![localization per seed and paired differences](localization.png)", ""]
    if report.get("cams"):
        lines += [f"Grad-CAM of the true class on the first test images (seed {report['cams']['seed']}), the object's box in white:", "",
                  f"![Grad-CAM pages]({report['cams']['png']})", ""]
    return lines


def _model_table(report: dict[str, Any]) -> list[str]:
    spread = len(report["seeds"]) > 1
    head = "test top-1 (%), mean ± std" if spread else "test top-1 (%)"
    lines = [f"| model | params | MMACs / image | {head} | train time / run (s) |", "|---|---|---|---|---|"]
    for name, e in report["models"].items():
        acc = f"{e['mean']:.2f} ± {e['std']:.2f}" if spread else f"{e['mean']:.2f}"
        lines.append(f"| {name} | {e['params']:,} | {e['macs'] / 1e6:.1f} | {acc} | {e['train_seconds']:.1f} |")
    return lines


def _pair_table(report: dict[str, Any]) -> list[str]:
    """Same seed, same data order and augmentation: the pairs, not just the means, are what is compared."""
    plain, sc = report["models"]
    lines = [f"| seed | {plain} (%) | {sc} (%) | SC - plain (points) |", "|---|---|---|---|"]
    lines += [f"| {p['seed']} | {p['plain']:.2f} | {p['sc']:.2f} | {p['diff']:+.2f} |" for p in report["pairs"]]
    return lines


def _stopping_lines(report: dict[str, Any]) -> list[str]:
    n, until, limit = len(report["pairs"]), report["until_resolved"], report["max_seeds"]
    if until is None:
        return [f"Seeds: {', '.join(map(str, report['seeds']))}, chosen in advance.", ""] if report["status"] == "done" else \
            [f"In progress: {n} pair(s) done so far.", ""]
    state = f"stopped after {n} pairs" if report["status"] == "done" else f"in progress, {n} pair(s) done"
    if report["status"] == "done" and not study_finished([p["diff"] for p in report["pairs"]], until):
        state += " (the --max-seeds limit)"
    return [f"Stopping rule: seeds were added until the 95 % interval excluded zero or its half-width was at most "
            f"{until:g} points, up to {limit} pairs; {state}. Stopping on the data makes a spurious exclusion of zero "
            f"somewhat likelier than the nominal 5 %.", ""]


def _erf_lines(report: dict[str, Any]) -> list[str]:
    """The ERF beside the accuracy: per stage, the share of the image holding 50 % and 99 % of the gradient."""
    erf = report["erf"]
    plain, sc = report["models"]
    lines = [f"## Effective receptive field (seed {erf['seed']}, final weights, {erf['inputs']})", "",
             "Share of the image (smallest centred square) holding 50 % / 99 % of the centre unit's input gradient:", "",
             f"| stage | {sc} 50 % | {plain} 50 % | {sc} 99 % | {plain} 99 % |", "|---|---|---|---|---|"]
    for stage, by_model in erf["stages"].items():
        cells = [f"{100 * by_model[m][k]:.1f}%" for k in ("50%", "99%") for m in (sc, plain)]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return lines + ["", f"![ERF heatmaps per stage]({erf['png']})", "", f"Also at 20 % and 30 %: [{erf['report']}]({erf['report']}).", ""]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot(path: Path, report: dict[str, Any]) -> None:
    """Left: per-seed accuracy, pairs joined; middle: the differences with mean and 95 % CI; right: mean curves."""
    plt = _pyplot()
    names = list(report["models"])
    colors = {names[0]: "tab:gray", names[1]: "tab:blue"}
    with plt.rc_context({"font.size": 12, "axes.titlesize": 13, "legend.fontsize": 11}):
        fig, axes = plt.subplots(1, 3, figsize=(16, 5.2), gridspec_kw=dict(width_ratios=(1, 1.2, 1.3)))
        _plot_pairs(axes[0], report["pairs"], names, colors, "test top-1 (%)", "final accuracy per seed (lines join a pair)")
        _plot_diffs(axes[1], report, "paired differences")
        _plot_curves(axes[2], report, colors)
        fig.suptitle(f"{names[1]} vs {names[0]} on {report['data']}, {len(report['pairs'])} seed pair(s)", fontsize=14)
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)


def _plot_localization(path: Path, report: dict[str, Any]) -> None:
    """One row per localization metric: per-seed values (pairs joined), then the paired differences."""
    plt = _pyplot()
    names = list(report["models"])
    colors = {names[0]: "tab:gray", names[1]: "tab:blue"}
    keys = [k for k in report["metrics"] if k != "final_val_acc"]
    with plt.rc_context({"font.size": 12, "axes.titlesize": 13, "legend.fontsize": 11}):
        fig, axes = plt.subplots(len(keys), 2, figsize=(12, 5.2 * len(keys)), squeeze=False, gridspec_kw=dict(width_ratios=(1, 1.3)))
        for row, key in zip(axes, keys):
            block = report["metrics"][key]
            _plot_pairs(row[0], block["pairs"], names, colors, block["label"], f"{block['name']} per seed (lines join a pair)")
            _plot_diffs(row[1], block, f"{block['name']}: paired differences")
        fig.suptitle(f"Localization of the true class's Grad-CAM, {names[1]} vs {names[0]} on {report['data']}", fontsize=14)
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)


def _plot_pairs(ax: Any, pairs: Sequence[dict[str, Any]], names: Sequence[str], colors: dict[str, str], ylabel: str, title: str) -> None:
    plain, sc = names
    for p in pairs:
        ax.plot([0, 1], [p["plain"], p["sc"]], "-", color="0.6", zorder=1)
    ax.scatter([0] * len(pairs), [p["plain"] for p in pairs], color=colors[plain], s=45, zorder=2)
    ax.scatter([1] * len(pairs), [p["sc"] for p in pairs], color=colors[sc], s=45, zorder=2)
    ax.set(xticks=[0, 1], xlim=(-0.4, 1.4), ylabel=ylabel, title=title)
    ax.set_xticklabels([plain, sc])
    ax.grid(axis="y", alpha=0.3)


def _plot_diffs(ax: Any, block: dict[str, Any], title: str) -> None:
    """``block``: paired values with their interval (a report's accuracy, or one of its ``metrics``)."""
    pairs = block["pairs"]
    ax.axhline(0.0, color="black", lw=1)
    ax.scatter(range(len(pairs)), [p["diff"] for p in pairs], color="tab:blue", s=45, zorder=3, label="one seed")
    mean_x = len(pairs) + 0.5
    if block["ci95"] is None:
        ax.scatter([mean_x], [block["mean_diff"]], color="tab:red", marker="D", s=55, zorder=3, label="mean (one seed: no interval)")
    else:
        ax.errorbar([mean_x], [block["mean_diff"]], yerr=[[block["half_width"]], [block["half_width"]]], fmt="D", color="tab:red",
                    capsize=8, lw=2, ms=8, zorder=3, label="mean, 95 % t-interval")
    ax.set_xticks([*range(len(pairs)), mean_x])
    ax.set_xticklabels([str(p["seed"]) for p in pairs] + ["mean"])
    ax.set(xlabel="seed", ylabel="SC - plain (points)", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def _plot_curves(ax: Any, report: dict[str, Any], colors: dict[str, str]) -> None:
    from matplotlib.ticker import MaxNLocator

    for name, entry in report["models"].items():
        curves = [r["curve"] for r in entry["runs"]]
        mean = [statistics.fmean(v) for v in zip(*curves)]
        ax.plot(range(1, len(mean) + 1), mean, "o-", color=colors[name], label=name)
    ax.set(xlabel="epoch", ylabel="test top-1 (%)", title="validation accuracy per epoch (seed mean)")
    epochs = max(len(r["curve"]) for e in report["models"].values() for r in e["runs"])
    ax.set_xlim(0.5, epochs + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
