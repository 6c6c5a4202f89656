"""What each ONNX rewrite (``scnet.fast.onnx_form``) does to SCNet-50's speed on the two ONNX engines, beside ResNet-50.

Every network runs as exported today ("export"), with its norms folded only ("fold"), and (SCNet-50) with each
rewrite alone ("merge": conv1_a and conv1_b as one convolution; "split": conv3 split over the two halves, no
concatenation) and both ("rw"), on ONNX Runtime and OpenVINO, float32 and int8 (the int8 file quantizes the form's
float32 graph), at batch 1, 8 and 32. ResNet-50 (``scnet50_plain``, torchvision's ResNet-50 module for module) gets
the rewrites that apply to it: folding. ``--keeps`` adds, in int8, SCNet-50 with more kept in float (where the
quantize/dequantize pairs go around the calibration branch). Every case is built once and timed round-robin in one process
(``scnet.bench.run_bench``); each network, precision and form is exported once and run by both engines.

    python scripts/bench_rewrites.py --repeats 5 --warmup 2 --out docs/results/engines/rewrites
    python scripts/bench_rewrites.py --forms export fold --keeps gate branch --out runs/placement
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from scnet.bench import BenchCase, Rounds, run_bench, write_report
from scnet.bench.cases import ONNX_FORMS, form_mode as mode
from scnet.int8 import KEEP_FP32

SC, PLAIN = "scnet50", "scnet50_plain"
ENGINES = {"openvino": "OpenVINO float32", "onnx": "ONNX Runtime float32", "openvino_int8": "OpenVINO int8",
           "int8": "ONNX Runtime int8"}
INT8_ENGINES = ("openvino_int8", "int8")
FORMS = ("export", *ONNX_FORMS)  # "export": the model's own graph
PLAIN_FORMS = ("export", "fold")  # the rewrites that apply to ResNet-50


def sc_variants(engine: str, forms: Sequence[str], keeps: Sequence[str], keep_form: str) -> list[tuple[str, str]]:
    """SCNet-50's (label, bench mode) on ``engine``: each form, and for int8 each QDQ placement (``int8.KEEP_FP32``:
    what stays float) on ``keep_form``, labelled "FORM+KEEP"."""
    made = [(f, mode(engine, f)) for f in forms]
    if engine in INT8_ENGINES:
        made += [(f"{keep_form}+{k}", mode(f"{engine}_{k}", keep_form)) for k in keeps]
    return made


def cases(batches: list[int], size: int = 224, sc: str = SC, plain: str = PLAIN, forms: Sequence[str] = FORMS,
          keeps: Sequence[str] = (), keep_form: str = "fold") -> list[BenchCase]:
    made = []
    for engine in ENGINES:
        for batch in batches:
            made += [BenchCase(sc, m, batch, size) for _, m in sc_variants(engine, forms, keeps, keep_form)]
            made += [BenchCase(plain, mode(engine, f), batch, size) for f in PLAIN_FORMS]
    return made


def table(results: list[dict[str, Any]], sc: str = SC, plain_name: str = PLAIN, forms: Sequence[str] = FORMS,
          keeps: Sequence[str] = (), keep_form: str = "fold") -> list[dict[str, Any]]:
    """Per engine, batch and SCNet variant: SCNet-50's img/s, ResNet-50's as exported and folded, and the ratio to
    the faster of ResNet-50's two."""
    ips = {(r["model"], r["mode"], r["batch"]): r.get("images_per_s") for r in results}
    rows = []
    for engine in ENGINES:
        for batch in sorted({r["batch"] for r in results}):
            plain = {f: ips.get((plain_name, mode(engine, f), batch)) for f in PLAIN_FORMS}
            best_plain = max((v for v in plain.values() if v), default=None)
            for label, m in sc_variants(engine, forms, keeps, keep_form):
                got = ips.get((sc, m, batch))
                rows.append(dict(engine=engine, batch=batch, form=label, scnet=got, resnet=plain["export"],
                                 resnet_fold=plain["fold"], ratio=got / best_plain if got and best_plain else None))
    return rows


def _fmt(v: Optional[float], spec: str = ".1f") -> str:
    return "failed" if v is None else format(v, spec)


def markdown(rows: list[dict[str, Any]], command: str, bench: dict[str, Any], size: int = 224) -> list[str]:
    lines = ["# ONNX rewrites: SCNet-50 against ResNet-50 per engine, precision, batch and form", "",
             f"Command: `{command}`", "", f"Machine: {bench['machine']}; {bench['repeats']} timed rounds round-robin "
             f"after {bench['warmup']} warm-up calls each, median; random weights, {size} px.", "",
             "ratio: SCNet-50 in that form against the faster of ResNet-50's two forms (as exported, folded).", "",
             "| engine | batch | form | SCNet-50 img/s | ResNet-50 as exported | ResNet-50 folded | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {ENGINES[r['engine']]} | {r['batch']} | {r['form']} | {_fmt(r['scnet'])} | {_fmt(r['resnet'])} | "
                     f"{_fmt(r['resnet_fold'])} | {_fmt(r['ratio'], '.3f')}x |")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    Rounds.add_options(p)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--models", nargs=2, default=[SC, PLAIN], metavar=("SC", "PLAIN"), help="the SC network and its twin")
    p.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS), help="SCNet-50's graphs (default: all)")
    p.add_argument("--keeps", nargs="*", choices=[k for k in KEEP_FP32 if k != "none"], default=[],
                   help="int8 only: also SCNet-50 with these kept in float (int8.KEEP_FP32), on --keep-form")
    p.add_argument("--keep-form", choices=FORMS, default="fold", help="the graph --keeps quantize (default fold)")
    p.add_argument("--out", type=Path, default=Path("runs/rewrites"))
    args = p.parse_args(argv)
    how = dict(forms=args.forms, keeps=args.keeps, keep_form=args.keep_form)
    command = "python scripts/bench_rewrites.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    sc, plain = args.models
    bench = run_bench(cases(args.batches, args.size, sc, plain, **how), Rounds.from_options(args), baseline=plain, memory=False)
    write_report(bench, args.out, command=command)
    rows = table(bench["results"], sc, plain, **how)
    (args.out / "rewrites.json").write_text(json.dumps(dict(command=command, rows=rows), indent=2))
    (args.out / "rewrites.md").write_text("\n".join(markdown(rows, command, bench, args.size)) + "\n")
    print(f"report: {args.out / 'rewrites.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
