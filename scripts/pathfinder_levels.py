"""Accuracy against curve length: the Pathfinder studies (one ``scnet compare`` per level) in one table and plot.

    python scripts/pathfinder_levels.py docs/results/pathfinder-study/len6 docs/results/pathfinder-study/len9 \
        docs/results/pathfinder-study/len14 --out docs/results/pathfinder-study

Reads each study's report.json (its level from the data name, e.g. pathfinder32-14) and writes levels.png (left:
each model's mean test accuracy per length with its 95 % t-interval over seeds; right: the paired difference SC -
plain per length with its 95 % interval), levels.json and levels.md.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from scipy.stats import t as student_t


def _mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % Student t-interval (0 for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, float(student_t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / len(values) ** 0.5


def _level(report: dict) -> dict:
    size, length = (int(g) for g in re.fullmatch(r"pathfinder(\d+)-(\d+)", report["data"]).groups())
    plain, sc = report["models"]
    row = dict(size=size, length=length, pairs=len(report["pairs"]), mean_diff=report["mean_diff"], ci95=report["ci95"],
               verdict=report["verdict"], models={})
    for name in (plain, sc):
        accs = [r["final_val_acc"] for r in report["models"][name]["runs"]]
        mean, half = _mean_interval(accs)
        row["models"][name] = dict(accs=accs, mean=mean, half_width=half)
    return row


def _plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows[0]["models"])
    lengths = [r["length"] for r in rows]
    colors = {names[0]: "tab:gray", names[1]: "tab:blue"}
    with plt.rc_context({"font.size": 12, "axes.titlesize": 13, "legend.fontsize": 11}):
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
        for k, name in enumerate(names):
            offset = (k - 0.5) * 0.25  # side by side, so the intervals do not hide each other
            left.errorbar([x + offset for x in lengths], [r["models"][name]["mean"] for r in rows],
                          yerr=[r["models"][name]["half_width"] for r in rows], fmt="o-", capsize=6, color=colors[name], label=name)
            for r in rows:
                left.scatter([r["length"] + offset] * len(r["models"][name]["accs"]), r["models"][name]["accs"], s=12,
                             color=colors[name], alpha=0.35)
        left.axhline(50, color="black", lw=1, ls=":", label="chance")
        left.set(xlabel="contour length (dashes per curve)", ylabel="test accuracy (%)", xticks=lengths,
                 title="accuracy per level: seed mean, 95 % interval, each seed")
        left.legend(loc="lower left")
        right.axhline(0, color="black", lw=1)
        for r in rows:
            if r["ci95"] is not None:
                right.errorbar([r["length"]], [r["mean_diff"]], yerr=[[r["mean_diff"] - r["ci95"][0]], [r["ci95"][1] - r["mean_diff"]]],
                               fmt="D", color="tab:red", capsize=8, lw=2)
            else:
                right.scatter([r["length"]], [r["mean_diff"]], marker="D", color="tab:red")
        right.set(xlabel="contour length (dashes per curve)", ylabel="SC - plain (points)", xticks=lengths,
                  title="paired difference, mean and 95 % t-interval")
        right.grid(axis="y", alpha=0.3)
        left.grid(alpha=0.3)
        fig.suptitle(f"{names[1]} vs {names[0]} on Pathfinder {rows[0]['size']} px, by curve length", fontsize=14)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", help="study folders (each with report.json)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    rows = sorted((_level(json.loads((Path(s) / "report.json").read_text())) for s in args.studies), key=lambda r: r["length"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _plot(out / "levels.png", rows)
    (out / "levels.json").write_text(json.dumps(rows, indent=2))
    plain, sc = rows[0]["models"]
    lines = [f"# {sc} vs {plain} on Pathfinder {rows[0]['size']} px, by curve length", "",
             f"Command: `python scripts/pathfinder_levels.py {' '.join(args.studies)} --out {args.out}`", "",
             f"| length | pairs | {plain} (%) | {sc} (%) | SC - plain (points) | 95 % CI | verdict |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]" if r["ci95"] else "none (one pair)"
        lines.append(f"| {r['length']} | {r['pairs']} | {r['models'][plain]['mean']:.2f} ± {r['models'][plain]['half_width']:.2f} | "
                     f"{r['models'][sc]['mean']:.2f} ± {r['models'][sc]['half_width']:.2f} | {r['mean_diff']:+.2f} | {ci} | {r['verdict']} |")
    lines += ["", "Model columns: seed mean ± the half-width of its 95 % t-interval.", "", "![accuracy against curve length](levels.png)", ""]
    (out / "levels.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
