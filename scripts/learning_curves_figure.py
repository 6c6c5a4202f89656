"""Every learning curve side by side: one column per task (accuracy against training-set size, then the paired
difference), and a summary table per task (the size where SC - plain is largest, and the data multiplier there).

    python scripts/learning_curves_figure.py docs/results/learning-curves --out docs/results/learning-curves

Reads each ``<folder>/<curve>/report.json`` written by ``scnet compare --train-sizes``; writes ``curves.png`` and
``curves.md``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from scnet.train.compare import CURVE_KIND
from scnet.train.curve_report import describe_multiplier, draw_accuracy, draw_difference

# Column order and titles of the tasks the project's curves cover (others follow, by folder name).
TITLES = {"pathfinder6": "Pathfinder 32 px, curves of 6 dashes", "cluttered": "cluttered Fashion-MNIST (60x60)",
          "fashion": "Fashion-MNIST (28x28)"}


def _reports(folder: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(folder.glob("*/report.json")):
        report = json.loads(path.read_text())
        if report.get("kind") == CURVE_KIND and report["curve"]["points"]:
            found[path.parent.name] = report
    order = [n for n in TITLES if n in found] + [n for n in found if n not in TITLES]
    return {n: found[n] for n in order}


def _figure(reports: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"font.size": 12, "axes.titlesize": 13, "legend.fontsize": 10}):
        fig, axes = plt.subplots(2, len(reports), figsize=(6.2 * len(reports), 9.5), squeeze=False)
        for column, (name, report) in enumerate(reports.items()):
            draw_accuracy(axes[0][column], report)
            draw_difference(axes[1][column], report)
            axes[0][column].set_title(f"{TITLES.get(name, name)}\naccuracy against training-set size")
            axes[1][column].set_title(f"SC - plain per size ({report['curve']['pairs']} pairs)")
        fig.suptitle("The demo SCNet against its plain twin: learning curves (every run the same steps; only the data varies)",
                     fontsize=14)
        fig.tight_layout()
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)


def _summary(reports: dict[str, dict[str, Any]]) -> str:
    lines = ["# Learning curves: the summary", "",
             "| task | sizes (pairs) | largest SC - plain (points, 95 % CI) at | data multiplier there (95 % interval) | "
             "at the largest size: SC - plain |", "|---|---|---|---|---|"]
    for name, report in reports.items():
        points = report["curve"]["points"]
        top = next(p for p in points if p["size"] == report["curve"]["largest_difference_at"])
        ci = top["diff"]["ci95"]
        largest = f"{top['diff']['mean']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else " (1 seed)")
        last = points[-1]["diff"]
        sizes = ", ".join(f"{p['size']:,} ({len(p['seeds'])})" for p in points)
        last_ci = f" [{last['ci95'][0]:+.2f}, {last['ci95'][1]:+.2f}]" if last["ci95"] else ""
        lines.append(f"| [{TITLES.get(name, name)}]({name}/report.md) | {sizes} | {largest} at {top['size']:,} | "
                     f"{describe_multiplier(top['multiplier'])} | {last['mean']:+.2f}{last_ci} at {points[-1]['size']:,} |")
    return "\n".join(lines + ["", "![every curve side by side](curves.png)", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the folder holding one curve report per subfolder")
    parser.add_argument("--out", type=Path, required=True, help="where curves.png and curves.md go")
    args = parser.parse_args()
    reports = _reports(args.folder)
    if not reports:
        raise SystemExit(f"no learning-curve report under {args.folder}")
    args.out.mkdir(parents=True, exist_ok=True)
    _figure(reports, args.out / "curves.png")
    (args.out / "curves.md").write_text(_summary(reports))
    print(f"wrote {args.out / 'curves.png'} and {args.out / 'curves.md'} ({', '.join(reports)})")


if __name__ == "__main__":
    main()
