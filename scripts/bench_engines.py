"""SCNet-50 against ResNet-50 on every CPU engine people deploy with, side by side, and where the time goes.

Engines: eager PyTorch, ``scnet.deploy`` (norms folded, oneDNN fused forms), torch.compile of it, ONNX Runtime
and OpenVINO in float32, and both again on the int8 file ``scnet.int8.quantize`` writes. ResNet-50 is
``scnet50_plain``, torchvision's ResNet-50 module for module built from this package's blocks, so ``deploy`` folds
its norms as it folds SCNet-50's (a fair comparison); torchvision's own ResNet-50 runs eagerly as the control.
Every case is built once and timed round-robin in one process (``scnet.bench.run_bench``).

Then, at batch 8, both ONNX engines are profiled (ONNX Runtime's node profiler, OpenVINO's performance counters)
and each kernel's time is given to the network part it computes (the stem, each bottleneck, the head) from the
module path the ONNX exporter writes on every node: where SCNet-50 is slower than ResNet-50, the parts say why.

    python scripts/bench_engines.py --repeats 5 --warmup 2 --out docs/results/engines
"""
from __future__ import annotations

import argparse
import ast
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from scnet.bench import BenchCase, Rounds, run_bench, write_report

ENGINES = {  # bench mode -> what runs the network
    "eager_cl": "eager PyTorch, channels_last",
    "deploy": "scnet.deploy: norms folded, oneDNN fused forms, channels_last",
    "compiled": "torch.compile of deploy (inductor, freezing)",
    "onnx": "ONNX Runtime float32",
    "openvino": "OpenVINO float32",
    "int8": "ONNX Runtime int8 (static QDQ)",
    "openvino_int8": "OpenVINO int8 (the same file)",
}
INT8 = ("int8", "openvino_int8")
SC, PLAIN, CONTROL = "scnet50", "scnet50_plain", "resnet50"
NAMES = {SC: "SCNet-50", PLAIN: "ResNet-50", CONTROL: "ResNet-50 (torchvision)"}
HEAD_MODULES = ("global_pool", "fc", "head", "avgpool", "flatten")


def engine_cases(batches: list[int], size: int = 224) -> list[BenchCase]:
    """Both networks on every engine at every batch, and torchvision's ResNet-50 eagerly as the control."""
    cases = [BenchCase(m, e, b, size) for e in ENGINES for b in batches for m in (SC, PLAIN)]
    return cases + [BenchCase(CONTROL, "eager_cl", b, size) for b in batches]


def engine_table(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per engine and batch: both networks' img/s and SCNet-50's ratio; per network and batch the fastest float32
    and the fastest int8 engine; the failures with their errors."""
    ips = {(r["model"], r["mode"], r["batch"]): r.get("images_per_s") for r in results}
    batches = sorted({r["batch"] for r in results})
    rows = []
    for engine in ENGINES:
        for b in batches:
            sc, plain = ips.get((SC, engine, b)), ips.get((PLAIN, engine, b))
            rows.append(dict(engine=engine, batch=b, scnet=sc, resnet=plain, ratio=sc / plain if sc and plain else None))
    fastest = {}
    for model in (SC, PLAIN):
        for b in batches:
            for kind, engines in (("float32", [e for e in ENGINES if e not in INT8]), ("int8", list(INT8))):
                timed = {e: ips.get((model, e, b)) for e in engines if ips.get((model, e, b))}
                fastest[f"{model}/{b}/{kind}"] = max(timed, key=timed.get) if timed else None
    errors = [dict(model=r["model"], mode=r["mode"], batch=r["batch"], error=r["error"]) for r in results if r.get("error")]
    return dict(rows=rows, fastest=fastest, errors=errors, batches=batches,
                control={b: ips.get((CONTROL, "eager_cl", b)) for b in batches})


def table_markdown(table: dict[str, Any]) -> list[str]:
    """The engines table: images per second at 224 px, bold where an engine is the fastest of its kind for a network."""
    batches = table["batches"]
    head = "| engine | " + " | ".join(f"batch {b}: SCNet-50 | ResNet-50 | ratio" for b in batches) + " |"
    lines = [head, "|---|" + "---|---|---|" * len(batches)]
    by = {(r["engine"], r["batch"]): r for r in table["rows"]}

    def cell(model: str, engine: str, b: int, value: Optional[float]) -> str:
        if value is None:
            return "failed"
        kind = "int8" if engine in INT8 else "float32"
        return f"**{value:.1f}**" if table["fastest"].get(f"{model}/{b}/{kind}") == engine else f"{value:.1f}"

    for engine in ENGINES:
        cells = []
        for b in batches:
            r = by[engine, b]
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            cells += [cell(SC, engine, b, r["scnet"]), cell(PLAIN, engine, b, r["resnet"]), ratio]
        lines.append(f"| {engine} | " + " | ".join(cells) + " |")
    control = " | ".join(f"- | {v:.1f} | -" if v else "- | failed | -" for v in table["control"].values())
    lines.append(f"| eager_cl, torchvision's ResNet-50 (control) | {control} |")
    return lines


# ---- where the time goes: ONNX kernels attributed to the network's parts -------------------------------------------

def part_of(scopes: list[str]) -> str:
    """The part a node computes, from the exporter's module path ('', 'layer2', 'layer2.0', ...): the bottleneck
    ``layer<i>.<j>``, the head (pooling and classifier), the stem (the rest of the top-level modules) or "other"
    (shape arithmetic the exporter adds outside any module)."""
    if len(scopes) > 2 and scopes[1].startswith("layer"):
        return scopes[2]
    if len(scopes) > 1 and scopes[1] in HEAD_MODULES:
        return "head"
    return "stem" if scopes and scopes[0] == "" else "other"


def part_names(path: Path) -> dict[str, str]:
    """Every node name and output tensor name of an exported ONNX file -> the part that node belongs to."""
    import onnx

    names = {}
    for node in onnx.load(str(path)).graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"]) if "pkg.torch.onnx.name_scopes" in meta else []
        part = part_of(scopes)
        names[node.name] = part
        for out in node.output:
            names[out] = part
    return names


def attribute(kernels: list[Kernel], names: dict[str, str]) -> dict[str, float]:
    """Seconds per part from (engine's node name, op, seconds). Engines rename what they fuse or insert: a name is
    matched to the longest known name it starts with (ONNX Runtime's ``<tensor>_nchwc``, quantize's
    ``<tensor>_QuantizeLinear``), else the longest it ends with (OpenVINO's ``input_abcd_acdb_<node>`` reorders),
    else it is a layout reorder of the engine's own ("reorders")."""
    known = sorted(names, key=len, reverse=True)
    out: dict[str, float] = {}
    for name, _, seconds in kernels:
        part = names.get(name)
        if part is None:
            hit = next((k for k in known if name.startswith(k) and name[len(k)] == "_"), None)
            hit = hit or next((k for k in known if name.endswith("_" + k)), None)
            part = names[hit] if hit else "reorders"
        out[part] = out.get(part, 0.0) + seconds
    return out


Kernel = tuple[str, str, float]  # (engine's node name, op type, seconds)

OP_KINDS = {  # op type as each engine names it -> what it computes
    "convolutions and classifier": ("Conv", "QLinearConv", "FusedConv", "Convolution", "FullyConnected", "Gemm", "MatMul",
                                    "QGemm", "FullyConnectedQuantizedLegacy"),
    "pooling and upsampling (K2's pool, Up)": ("AveragePool", "AvgPool", "MaxPool", "Resize", "Interpolate", "ReduceMean",
                                               "GlobalAveragePool", "QLinearAveragePool", "QLinearGlobalAveragePool", "Pooling",
                                               "NhwcMaxPool"),
    "element-wise (gate, ReLU, residual add)": ("Sigmoid", "Mul", "Add", "Relu", "Subgraph", "Eltwise", "QLinearSigmoid",
                                                "QLinearMul", "QLinearAdd", "Math"),
    "concatenation": ("Concat", "QLinearConcat"),
    "quantize / dequantize": ("QuantizeLinear", "DequantizeLinear", "FakeQuantize", "DynamicQuantizeLinear"),
}


def op_kind(op: str) -> str:
    return next((kind for kind, ops in OP_KINDS.items() if op in ops), "reorders, other")


def profile_onnxruntime(path: Path, x: torch.Tensor, calls: int, threads: int) -> list[Kernel]:
    """(node, op, seconds) for every kernel of ``calls`` timed runs after one untimed run, ONNX Runtime's profiler."""
    import onnxruntime as ort

    from scnet.engines import onnxruntime_options

    options = onnxruntime_options(threads, spin=False)
    with tempfile.TemporaryDirectory() as work:
        options.enable_profiling, options.profile_file_prefix = True, str(Path(work) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        for _ in range(calls + 1):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    kernels = [(e["name"][: -len("_kernel_time")], e.get("args", {}).get("op_name", ""), e["dur"] * 1e-6) for e in events
               if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_call = len(kernels) // (calls + 1)
    return kernels[per_call:]  # the first call's kernels are not timed


def profile_openvino(path: Path, x: torch.Tensor, calls: int, threads: int) -> list[Kernel]:
    """(node, op, seconds) for every executed node over ``calls`` runs after one untimed run, OpenVINO's counters."""
    from scnet.engines import openvino_core, openvino_request

    request = openvino_request(openvino_core().read_model(str(path)), tuple(x.shape), threads, profile=True)
    request.infer({0: x.numpy()})
    kernels = []
    for _ in range(calls):
        request.infer({0: x.numpy()})
        kernels += [(p.node_name, p.node_type, p.real_time.total_seconds()) for p in request.get_profiling_info() if p.real_time.total_seconds() > 0]
    return kernels


def groups(per_part: dict[str, float]) -> dict[str, float]:
    """Parts summed into the groups the report compares: the stem, the first block of each stage (its projection
    shortcut; stride 2 in stages 2-4, where SCNet's K3 and gate run at the input resolution), the other blocks, the
    head, and the engine's own layout reorders and shape arithmetic."""
    out = {"stem": 0.0, "first blocks (layer1.0, stride-2 layer2-4.0)": 0.0, "other blocks": 0.0, "head": 0.0, "reorders, other": 0.0}
    for part, s in per_part.items():
        if part.startswith("layer"):
            out["first blocks (layer1.0, stride-2 layer2-4.0)" if part.endswith(".0") else "other blocks"] += s
        elif part in ("stem", "head"):
            out[part] += s
        else:
            out["reorders, other"] += s
    return out


def where_time_goes(batch: int, calls: int, threads: int, calibration: int = 4) -> dict[str, Any]:
    """ms per call by part, SCNet-50 and ResNet-50, for both ONNX engines in float32 and int8, at ``batch``."""
    from scnet import load_model
    from scnet.export import export_onnx
    from scnet.int8 import quantize

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, generator=gen)
    calib = [torch.randn(batch, 3, 224, 224, generator=gen) for _ in range(calibration)]
    profilers: dict[str, Callable] = {"onnx": profile_onnxruntime, "openvino": profile_openvino}
    out: dict[str, Any] = {}
    ops: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as work:
        for model_name in (SC, PLAIN):
            torch.manual_seed(0)
            model = load_model(model_name).model.eval()
            fp32, int8 = Path(work) / f"{model_name}.onnx", Path(work) / f"{model_name}-int8.onnx"
            export_onnx(model, fp32, in_chans=3, example_size=224)
            quantize(model, calib, path=int8)
            names = part_names(fp32)
            for engine, profile in profilers.items():
                for kind, path in (("float32", fp32), ("int8", int8)):
                    kernels = profile(path, x, calls, threads)
                    ms = {p: 1e3 * s / calls for p, s in attribute(kernels, names).items()}
                    out.setdefault(f"{engine}/{kind}", {})[model_name] = ms
                    by_op = ops.setdefault(f"{engine}/{kind}", {}).setdefault(model_name, {})
                    for _, op, s in kernels:
                        by_op[op_kind(op)] = by_op.get(op_kind(op), 0.0) + 1e3 * s / calls
                    print(f"profiled {model_name} on {engine} {kind}: {sum(ms.values()):.1f} ms per call")
    return dict(batch=batch, calls=calls, threads=threads, parts=out, ops=ops)


def parts_markdown(profile: dict[str, Any]) -> list[str]:
    lines = ["| engine | part | SCNet-50 ms | ResNet-50 ms | SCNet - ResNet ms |", "|---|---|---|---|---|"]
    for engine, by_model in profile["parts"].items():
        sc, plain = groups(by_model[SC]), groups(by_model[PLAIN])
        for part in sc:
            lines.append(f"| {engine} | {part} | {sc[part]:.1f} | {plain[part]:.1f} | {sc[part] - plain[part]:+.1f} |")
        total_sc, total_plain = sum(sc.values()), sum(plain.values())
        lines.append(f"| {engine} | **all kernels** | {total_sc:.1f} | {total_plain:.1f} | {total_sc - total_plain:+.1f} |")
    return lines


def ops_markdown(profile: dict[str, Any]) -> list[str]:
    """Kernel time by what the op computes, the whole network: where SCNet's extra or saved time sits."""
    lines = ["| engine | op kind | SCNet-50 ms | ResNet-50 ms | SCNet - ResNet ms |", "|---|---|---|---|---|"]
    for engine, by_model in profile.get("ops", {}).items():
        for kind in [*OP_KINDS, "reorders, other"]:
            sc, plain = by_model[SC].get(kind, 0.0), by_model[PLAIN].get(kind, 0.0)
            if sc or plain:
                lines.append(f"| {engine} | {kind} | {sc:.1f} | {plain:.1f} | {sc - plain:+.1f} |")
    return lines


def blocks_markdown(profile: dict[str, Any]) -> list[str]:
    """Every bottleneck's kernel time on each engine: SCNet-50 / ResNet-50 ms."""
    engines = list(profile["parts"])
    blocks = sorted({p for e in engines for p in profile["parts"][e][SC] if p.startswith("layer")},
                    key=lambda p: tuple(int(v) for v in p[5:].split(".")))
    lines = ["| block | " + " | ".join(f"{e}: SCNet / ResNet ms" for e in engines) + " |", "|---|" + "---|" * len(engines)]
    for block in blocks:
        cells = [f"{profile['parts'][e][SC].get(block, 0):.2f} / {profile['parts'][e][PLAIN].get(block, 0):.2f}" for e in engines]
        lines.append(f"| {block} | " + " | ".join(cells) + " |")
    return lines


# ---- report ---------------------------------------------------------------------------------------------------------

def plot(table: dict[str, Any], path: Path) -> None:
    """Left: img/s of both networks on every engine at batch 8; right: SCNet-50 / ResNet-50 per engine and batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines, batches = list(ENGINES), table["batches"]
    by = {(r["engine"], r["batch"]): r for r in table["rows"]}
    mid = 8 if 8 in batches else batches[len(batches) // 2]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6))
    xs = range(len(engines))
    for offset, (key, label) in ((-0.2, ("scnet", "SCNet-50")), (0.2, ("resnet", "ResNet-50"))):
        left.bar([x + offset for x in xs], [by[e, mid][key] or 0 for e in engines], width=0.4, label=label)
    left.set_xticks(list(xs), engines, rotation=30, ha="right")
    left.set_ylabel(f"images / s, batch {mid}, 224 px")
    left.legend()
    width = 0.8 / len(batches)
    for i, b in enumerate(batches):
        right.bar([x - 0.4 + width * (i + 0.5) for x in xs], [by[e, b]["ratio"] or 0 for e in engines], width=width, label=f"batch {b}")
    right.axhline(1.0, color="k", linewidth=0.8, linestyle="--")
    right.set_xticks(list(xs), engines, rotation=30, ha="right")
    right.set_ylabel("SCNet-50 / ResNet-50 throughput")
    right.set_ylim(0, 1.25)
    right.legend(ncol=len(batches), loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(out: Path, report: dict[str, Any]) -> None:
    table, profile = report["table"], report.get("profile")
    lines = ["# SCNet-50 and ResNet-50 on every CPU engine", "", f"Command: `{report['command']}`", "",
             f"Machine: {report['bench']['machine']}; {report['bench']['repeats']} timed rounds round-robin over all cases "
             f"after {report['bench']['warmup']} warm-up calls each, median; random weights, 224 px, float32 inputs. "
             "Bold: the fastest float32 (and the fastest int8) engine for that network and batch. Engines: "
             + "; ".join(f"{k} = {v}" for k, v in ENGINES.items()) + ".", "", "## Images per second", "",
             *table_markdown(table), ""]
    if table["errors"]:
        lines += ["Failed cases:", "", *(f"- {e['model']} {e['mode']} batch {e['batch']}: {e['error']}" for e in table["errors"]), ""]
    lines += ["![engines](engines.png)", ""]
    if profile:
        lines += [f"## Where the time goes: kernel time per part at batch {profile['batch']}", "",
                  f"Each engine's own profiler over {profile['calls']} calls ({profile['threads']} threads), per call; "
                  "kernel times add up to a little less than a call's wall time.", "", *parts_markdown(profile), "",
                  "### By op kind, the whole network", "", *ops_markdown(profile), "",
                  "### Every bottleneck", "", *blocks_markdown(profile), ""]
    (out / "engines.md").write_text("\n".join(lines))
    (out / "engines.json").write_text(json.dumps(report, indent=2))
    plot(table, out / "engines.png")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    Rounds.add_options(p)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--profile-calls", type=int, default=5, help="calls profiled per engine at batch 8 (0: no profile)")
    p.add_argument("--out", type=Path, default=Path("runs/engines"))
    p.add_argument("--rewrite", action="store_true", help="only write the report again from OUT/engines.json")
    p.add_argument("--profile-only", action="store_true", help="keep OUT/engines.json's timings, profile again")
    args = p.parse_args(argv)
    if args.rewrite or args.profile_only:
        report = json.loads((args.out / "engines.json").read_text())
        if args.profile_only:
            report["profile"] = where_time_goes(8, args.profile_calls, torch.get_num_threads())
        write(args.out, report)
        return 0
    command = "python scripts/bench_engines.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    bench = run_bench(engine_cases(args.batches), Rounds.from_options(args), baseline=PLAIN, memory=False)
    write_report(bench, args.out, command=command)
    report = dict(command=command, bench=bench, table=engine_table(bench["results"]))
    write(args.out, report)  # the table is kept even if profiling fails
    if args.profile_calls:
        report["profile"] = where_time_goes(8, args.profile_calls, torch.get_num_threads())
        write(args.out, report)
    print(f"report: {args.out / 'engines.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
