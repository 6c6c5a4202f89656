"""The project's fast-path targets, measured and rated: exactly the bench cases they need, each as a ratio.

These are this project's acceptance goals for its own fast path, not something a user of the library needs,
so they live here rather than in the installed package. The measurement is ``scnet.bench.run_bench``; the report
is ``bench.md`` with a "Targets" table before the rows.

    python scripts/bench_targets.py --repeats 5 --warmup 2 --out docs/results/bench-cpu
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from scnet.bench import BenchCase, Rounds, run_bench, write_report

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
    dict(goal="scnet50 training step vs resnet50's, both channels_last, batch 8", num=("scnet50", "train_cl", 8, 224),
         den=("resnet50", "train_cl", 8, 224), min=1.0),
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    Rounds.add_options(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--keep-freed-memory", action="store_true", help="time with glibc keeping freed memory, as scnet train runs")
    p.add_argument("--out", type=Path, default=Path("runs/bench-targets"))
    args = p.parse_args(argv)
    report = run_bench(target_cases(), Rounds.from_options(args), args.device, args.dtype,
                       memory=not args.no_memory, keep_memory=args.keep_freed_memory)
    report["targets"] = evaluate_targets(report)
    command = "python scripts/bench_targets.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    write_report(report, args.out, command=command, extra_md=targets_markdown(report["targets"]))
    for t in report["targets"]:
        ratio = "-" if t["ratio"] is None else f"{t['ratio']:.2f}x"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        print(f"target: {t['goal']}: {ratio} ({t['bound']}) {verdict}")
    print(f"report: {args.out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
