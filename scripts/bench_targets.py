"""The project's fast-path targets, measured and rated: exactly the bench cases they need, each as a ratio.

These are this project's acceptance goals for its own fast path, not something a user of the library needs,
so they live here rather than in the installed package. The measurement is ``scnet.bench.run_bench``; the report
is ``bench.md`` with a "Targets" table before the rows.

    python scripts/bench_targets.py --repeats 5 --warmup 2 --out docs/results/bench-cpu

Two versions of the code are compared from runs made alternately on one machine (each run's own folder), with
the spread between runs of the same code as the noise a difference must exceed:

    python scripts/bench_targets.py --compare old=RUN1,RUN3 new=RUN2,RUN4 --out DIR
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
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


def compare_runs(groups: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each target's ratio in every run of two groups (label -> bench.json reports), with each group's median and
    spread, and whether the second group is worse than the first beyond the noise.

    Why the spread: on a small shared machine a ratio of one code version moves by several hundredths from run to
    run. A difference counts only when the medians differ by more than the larger of the two groups' spreads
    (max - min of a group's ratios) and in the direction the target calls worse.
    """
    if len(groups) != 2 or any(not runs for runs in groups.values()):
        raise ValueError(f"compare needs two labelled groups of runs, got {[(k, len(v)) for k, v in groups.items()]}")
    first, second = groups
    rated = {label: [evaluate_targets(r) for r in runs] for label, runs in groups.items()}
    rows = []
    for i, t in enumerate(TARGETS):
        row: dict[str, Any] = dict(goal=t["goal"], bound=rated[first][0][i]["bound"])
        for label in (first, second):
            ratios = [r[i]["ratio"] for r in rated[label] if r[i]["ratio"] is not None]
            row[label] = dict(ratios=ratios, median=statistics.median(ratios) if ratios else None,
                              spread=max(ratios) - min(ratios) if len(ratios) > 1 else None)
        a, b = row[first], row[second]
        worse = None
        if a["median"] is not None and b["median"] is not None:
            noise = max(a["spread"] or 0.0, b["spread"] or 0.0)
            change = b["median"] - a["median"]
            worse = (change < -noise) if "min" in t else (change > noise)
            row.update(change=change, noise=noise)
        row["worse_beyond_noise"] = worse
        rows.append(row)
    return rows


def case_medians(groups: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Throughput of every case, the median over each group's runs, and the second group's change in percent."""
    first, second = groups
    medians: dict[str, dict[tuple, float]] = {}
    for label, runs in groups.items():
        values: dict[tuple, list[float]] = {}
        for report in runs:
            for r in report["results"]:
                if r.get("images_per_s"):
                    values.setdefault((r["model"], r["mode"], r["batch"], r["size"]), []).append(r["images_per_s"])
        medians[label] = {k: statistics.median(v) for k, v in values.items()}
    keys = [k for k in medians[first] if k in medians[second]]
    return [dict(case=k, **{first: medians[first][k], second: medians[second][k]},
                 change_pct=100.0 * (medians[second][k] / medians[first][k] - 1)) for k in keys]


def compare_markdown(groups: dict[str, list[dict[str, Any]]], rows: list[dict[str, Any]], sources: dict[str, list[str]]) -> list[str]:
    """compare.md: ``rows`` (``compare_runs(groups)``) as a table, then every case's median throughput."""
    first, second = groups
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"# Targets: {first} against {second}", "",
             "Runs: " + "; ".join(f"{label}: " + ", ".join(f"`{s}`" for s in srcs) for label, srcs in sources.items()) + ".",
             f"A ratio counts as worse only if the {second} median is on the wrong side of the {first} median by more than "
             "the noise, the larger spread (max - min) of the two groups' ratios.", "",
             f"| goal | target | {first}: each run | median | {second}: each run | median | change | noise | worse beyond noise |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r[first], r[second]
        verdict = {True: "**yes**", False: "no", None: "-"}[r["worse_beyond_noise"]]
        change = f"{r['change']:+.2f}" if "change" in r else "-"
        lines.append(f"| {r['goal']} | {r['bound']} | {', '.join(fmt(v) for v in a['ratios'])} | {fmt(a['median'])} | "
                     f"{', '.join(fmt(v) for v in b['ratios'])} | {fmt(b['median'])} | {change} | "
                     f"{fmt(r.get('noise'))} | {verdict} |")
    lines += ["", "## Every case: images per second, median over the runs", "",
              f"| model | mode | batch | size | {first} | {second} | change |", "|---|---|---|---|---|---|---|"]
    for c in case_medians(groups):
        model, mode, batch, size = c["case"]
        lines.append(f"| {model} | {mode} | {batch} | {size} | {c[first]:.1f} | {c[second]:.1f} | {c['change_pct']:+.1f} % |")
    return lines + [""]


def _compare_main(specs: list[str], out: Path) -> int:
    sources: dict[str, list[str]] = {}
    for spec in specs:
        label, sep, folders = spec.partition("=")
        if not sep or not label or not folders:
            raise SystemExit(f"bench_targets: --compare takes LABEL=RUN[,RUN...], got {spec!r}")
        sources[label] = folders.split(",")
    groups = {}
    for label, folders in sources.items():
        missing = [f for f in folders if not (Path(f) / "bench.json").is_file()]
        if missing:
            raise SystemExit(f"bench_targets: no bench.json in {', '.join(missing)}")
        groups[label] = [json.loads((Path(f) / "bench.json").read_text()) for f in folders]
    rows = compare_runs(groups)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text("\n".join(compare_markdown(groups, rows, sources)))
    for r in rows:
        print(f"{r['goal']}: {'WORSE beyond noise' if r['worse_beyond_noise'] else 'not worse beyond noise'}")
    print(f"report: {out / 'compare.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    Rounds.add_options(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--keep-freed-memory", action="store_true", help="time with glibc keeping freed memory, as scnet train runs")
    p.add_argument("--out", type=Path, default=Path("runs/bench-targets"))
    p.add_argument("--compare", nargs=2, metavar="LABEL=RUN,RUN", help="compare two groups of earlier runs instead of measuring")
    args = p.parse_args(argv)
    if args.compare:
        return _compare_main(args.compare, args.out)
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
