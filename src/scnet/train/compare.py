"""``compare``: the paper's claim in miniature. Each SC model and its plain twin, trained with one recipe over
several seeds; mean and spread of test accuracy, parameters, multiply-adds and time, as Markdown, JSON and a plot.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data import build_datasets
from ..models import plain_twin, sc_twin
from ..models.weights import read_checkpoint
from ..profile import count_macs, count_params, describe_machine
from .config import TrainConfig
from .runner import build_model_for, fit

__all__ = ["compare"]


def _pairs(models: Sequence[str]) -> list[str]:
    """Each requested model with its twin, plain first, without duplicates."""
    ordered: list[str] = []
    for name in models:
        for n in (plain_twin(name), sc_twin(name)):
            if n not in ordered:
                ordered.append(n)
    return ordered


def compare(base: TrainConfig, models: Sequence[str], seeds: Sequence[int], out: Path, command: str = "", show_progress: bool = True) -> dict[str, Any]:
    """Train every model (and twin) for every seed with ``base``'s recipe; write report.md/json/png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    names = _pairs(models)
    _, _, info = build_datasets(base.data, base.data_dir, 1, 1, base.image_size, base.download, 0)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        with torch.device("meta"):
            model = build_model_for(replace(base, model=name), info)
        size = (info.in_chans, info.image_size, info.image_size)
        results[name] = dict(params=count_params(model), macs=count_macs(model, size), runs=[])
    # Seeds outside, models inside: both members of a pair run back to back, so a slower stretch of the machine
    # hits both alike, and an interrupted comparison has whole pairs done.
    for seed in seeds:
        for name in names:
            cfg = replace(base, model=name, seed=seed, out=str(out / f"{name}-seed{seed}"), resume=None).validate()
            results[name]["runs"].append(_run(cfg, show_progress))
    for entry in results.values():
        accs = [r["final_val_acc"] for r in entry["runs"]]
        entry.update(mean=statistics.fmean(accs), std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     train_seconds=statistics.fmean(r["train_seconds"] for r in entry["runs"]))
    report = dict(data=info.name, seeds=list(seeds), recipe=_recipe(base), machine=describe_machine(torch.device('cuda') if torch.cuda.is_available() else torch.device('cpu')), command=command, models=results)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _plot(out / "report.png", report)
    (out / "report.md").write_text(_markdown(report))
    return report


def _run(cfg: TrainConfig, show_progress: bool) -> dict[str, Any]:
    """Train one (model, seed), or reuse the finished run a previous, interrupted ``compare`` left with this exact config."""
    run = Path(cfg.out)
    done = run / "compare-run.json"
    if done.is_file():
        previous = json.loads(done.read_text())
        if previous.get("config") == cfg.to_dict():
            print(f"reusing the finished run {run}")
            return previous["result"]
    if (run / "checkpoint-last.pth").is_file():  # an interrupted comparison left this run unfinished: continue it
        saved = read_checkpoint(run / "checkpoint-last.pth").get("config", {})
        if {**saved, "resume": None, "checkpoint_every": None} != {**cfg.to_dict(), "resume": None, "checkpoint_every": None}:
            raise ValueError(f"{run} holds an unfinished run with another configuration; move it away or choose another --out")
        print(f"continuing the unfinished run {run}")
        cfg = replace(cfg, resume=str(run))
    start = time.perf_counter()
    metrics = fit(cfg, show_progress=show_progress)
    result = dict(seed=cfg.seed, final_val_acc=metrics["final_val_acc"], best_val_acc=metrics["best_val_acc"],
                  train_seconds=metrics["train_seconds"], wall_seconds=time.perf_counter() - start, curve=_val_curve(run))
    done.write_text(json.dumps(dict(config=cfg.to_dict(), result=result), indent=2))
    return result


def _val_curve(run: Path) -> list[float]:
    import csv

    with open(run / "log.csv") as f:
        return [float(row["val_acc"]) for row in csv.DictReader(f)]


def _recipe(cfg: TrainConfig) -> dict[str, Any]:
    keys = ("epochs", "batch_size", "opt", "lr", "weight_decay", "warmup_epochs", "label_smoothing", "limit_train", "limit_val", "stem_type", "amp")
    return {k: getattr(cfg, k) for k in keys}


def _markdown(report: dict[str, Any]) -> str:
    seeds = report["seeds"]
    lines = [
        f"# Plain vs self-calibrated on {report['data']}",
        "",
        f"Command: `{report['command']}`" if report["command"] else "",
        f"Machine: {report['machine']}. Seeds: {', '.join(map(str, seeds))}. Recipe: "
        + ", ".join(f"{k}={v}" for k, v in report["recipe"].items()) + ".",
        "",
        "| model | params | MMACs / image | test top-1 (%) mean ± std | per seed | train time / run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in report["models"].items():
        per_seed = ", ".join(f"{r['final_val_acc']:.2f}" for r in e["runs"])
        lines.append(f"| {name} | {e['params']:,} | {e['macs'] / 1e6:.1f} | {e['mean']:.2f} ± {e['std']:.2f} | {per_seed} | {e['train_seconds']:.0f} |")
    lines += ["", "![accuracy per model and validation curves](report.png)", ""]
    for name, e in report["models"].items():
        if name != sc_twin(name) and sc_twin(name) in report["models"]:
            sc = report["models"][sc_twin(name)]
            # Same seed = same data order and augmentation for both models: compare pairs, not just means.
            diffs = [b["final_val_acc"] - a["final_val_acc"] for a, b in zip(e["runs"], sc["runs"])]
            diff = statistics.fmean(diffs)
            if len(diffs) < 2:
                verdict = "one seed: no spread to tell an effect from noise; run more seeds"
            else:
                sem = statistics.stdev(diffs) / math.sqrt(len(diffs))
                wins = sum(d > 0 for d in diffs)
                verdict = (f"per-seed differences {', '.join(f'{d:+.2f}' for d in diffs)}; standard error {sem:.2f}; "
                           f"SC ahead in {wins} of {len(diffs)} seeds; "
                           + ("the mean difference is more than twice its standard error" if abs(diff) > 2 * sem
                              else "the mean difference is within two standard errors of zero: not a resolved effect"))
            lines.append(f"- {sc_twin(name)} vs {name}: {diff:+.2f} points ({verdict}).")
    return "\n".join(lines) + "\n"


def _plot(path: Path, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["models"])
    fig, (ax_bar, ax_curve) = plt.subplots(1, 2, figsize=(11, 4.2))
    means = [report["models"][n]["mean"] for n in names]
    stds = [report["models"][n]["std"] for n in names]
    colors = ["tab:gray" if n.endswith("_plain") else "tab:blue" for n in names]
    ax_bar.bar(range(len(names)), means, yerr=stds, color=colors, capsize=6)
    for i, n in enumerate(names):
        accs = [r["final_val_acc"] for r in report["models"][n]["runs"]]
        ax_bar.scatter([i] * len(accs), accs, color="black", zorder=3, s=12)
    low = min(min(r["final_val_acc"] for r in e["runs"]) for e in report["models"].values())
    ax_bar.set(xticks=range(len(names)), ylabel="test top-1 (%)", title=f"{report['data']}: final accuracy (mean ± std, dots = seeds)")
    ax_bar.set_xticklabels(names, rotation=15)
    ax_bar.set_ylim(max(0.0, low - 2.0), 100.0 if low > 90 else None)
    for n, c in zip(names, colors):
        curves = [r["curve"] for r in report["models"][n]["runs"]]
        mean = [statistics.fmean(v) for v in zip(*curves)]
        ax_curve.plot(range(1, len(mean) + 1), mean, "o-", color=c, label=n)
    ax_curve.set(xlabel="epoch", ylabel="test top-1 (%)", title="validation accuracy per epoch (seed mean)")
    ax_curve.xaxis.get_major_locator().set_params(integer=True)
    ax_curve.grid(alpha=0.3)
    ax_curve.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
