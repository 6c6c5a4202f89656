"""The ``scnet`` command line: argument parsing and dispatch only; the work lives in the library."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence

from .errors import Stopped, flag as as_flag


def _command_line() -> str:
    """The command as the user typed it, for the reports that record how they were made."""
    import shlex

    return "scnet " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _info(args: argparse.Namespace) -> int:
    from .info import format_table, model_table

    rows = model_table(args.models, args.input_size)
    if not rows:
        print(f"scnet: no model matches {args.models!r}", file=sys.stderr)
        return 2
    print(format_table(rows, args.format))
    return 0


def _worded(error: BaseException) -> str:
    """An error as a user of the command line reads it: each setting it names given as its flag (``--batch-size``)."""
    return error.worded(as_flag) if callable(getattr(error, "worded", None)) else str(error)  # ours: settings as flags


MAX_SIDE = 4096  # image sides and batches far beyond any use on one machine: past them, allocations of gigabytes


def _int_in(low: int, high: int) -> Any:
    """An argparse type: an integer from ``low`` to ``high`` (argparse names the flag in its one-line error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:,} to {high:,}, got {value:,}")
        return value
    return parse


def _positive_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 97x130, got {text!r}") from None
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise argparse.ArgumentTypeError(f"each side must be from 1 to {MAX_SIDE:,}, got {text}")
    return h, w


def _with_stats(loaded: Any, mean: Optional[list[float]], std: Optional[list[float]]) -> Any:
    """The loaded model described with the normalisation given on the command line (one value per input channel)."""
    import dataclasses

    given = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    for key, values in given.items():
        if len(values) != loaded.info.in_chans:
            raise ValueError(f"--{key} needs one value per input channel ({loaded.info.in_chans}), got {len(values)}: {values}")
    if "std" in given and min(given["std"]) <= 0:
        raise ValueError(f"--std values must be positive, got {given['std']}")
    info = dataclasses.replace(loaded.info, **{k: tuple(v) for k, v in given.items()})
    return dataclasses.replace(loaded, info=info)


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .engines import check_onnx
    from .export import export_onnx, export_torchscript
    from .load import load_model

    _verify(args.checkpoint, args.sha256)
    out = Path(args.out)
    if args.checkpoint and out.resolve() == Path(args.checkpoint).resolve():
        raise ValueError(f"--out {out} is the checkpoint being exported; choose another file name")
    loaded = load_model(args.model, args.checkpoint, num_classes=args.num_classes, in_chans=args.in_chans, stem_type=args.stem_type)
    loaded = _with_stats(loaded, args.mean, args.std)
    model = loaded.model
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.int8:
        return _export_int8(args, loaded, out)
    if args.format == "hf":
        from .export import export_hf

        export_hf(loaded, out)
        print(f"wrote {out}/config.json and model.safetensors: timm's Hub layout for {loaded.arch}; load it with "
              f"timm.create_model('local-dir:{out}', pretrained=True) or scnet.create_model('local-dir:{out}')")
        return 0
    if args.format == "safetensors":
        from .export import export_safetensors

        export_safetensors(model, loaded.arch, out, loaded.info)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): safetensors weights of {loaded.arch} with metadata")
        return 0
    if args.format == "torchscript":
        export_torchscript(model, out)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): TorchScript, any batch and input size")
        return 0
    min_side = export_onnx(model, out, in_chans=model.in_chans, spec=loaded.info)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): ONNX, dynamic batch/height/width, inputs >= {min_side}x{min_side}")
    if args.no_check:
        return 0
    sizes = [s for s in args.check_sizes if min(s) >= min_side]
    rows = check_onnx(model, out, sizes, in_chans=model.in_chans, rtol=args.rtol)
    for row in rows:
        print(f"  onnxruntime vs PyTorch at {row['size']}: relative error {row['rel_error']:.2e}, "
              f"argmax {'equal' if row['argmax_equal'] else 'DIFFERS'} -> {'ok' if row['ok'] else 'FAIL'}")
    if not args.checkpoint:
        print("  note: random weights; check a trained checkpoint (--checkpoint) for a meaningful comparison")
    return 0 if all(row["ok"] for row in rows) else 1


def _export_int8(args: argparse.Namespace, loaded: Any, out: Any) -> int:
    """An int8 ONNX file calibrated on the model's training data (or --calibration-data), compared with float32."""
    from .int8 import export_int8

    if args.format != "onnx":
        raise ValueError(f"--int8 writes ONNX (ONNX Runtime runs it), not --format {args.format}")
    done = export_int8(loaded, out, args.calibration_data, args.data_dir, args.calibration_images, args.keep_fp32)
    fid = done["fidelity"]
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): int8 ONNX (kept in float: {args.keep_fp32}), calibrated on "
          f"{done['quantized'].calibration_images} {done['data']} images; against float32 on {fid['images']} validation images: "
          f"top-1 agreement {fid['top1_agreement']:.1f} %, logits' relative error {fid['rel_error']:.3f}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .bench import Rounds, grid, kernel_breakdown, run_bench, write_breakdown, write_report

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    cases = grid(args.models, args.modes, args.batch_sizes, args.sizes, args.baseline)
    out = Path(args.out)
    if args.breakdown:
        rows = [kernel_breakdown(c, args.device, args.dtype, calls=args.repeats, warmup=args.warmup) for c in cases]
        write_breakdown(rows, out, _command_line())
        for r in rows:
            top = ", ".join(f"{c['category']} {100 * c['share']:.0f}%" for c in r["categories"][:5])
            print(f"{r['model']:>16} {r['mode']:>14} b{r['batch']:<3} {r['size']}px  {r['total_us_per_call'] / 1e3:8.2f} ms: {top}")
        print(f"report: {out / 'breakdown.md'}")
        return 0
    report = run_bench(cases, Rounds.from_options(args), args.device, args.dtype, args.baseline,
                       memory=not args.no_memory, keep_memory=args.keep_freed_memory)
    write_report(report, out, command=_command_line())
    for row in report["results"]:
        status = row["error"] or f"{row['images_per_s']:8.2f} img/s  {row['latency_ms']:8.1f} ms"
        print(f"{row['model']:>16} {row['mode']:>14} b{row['batch']:<3} {row['size']}px  {status}")
    print(f"report: {out / 'bench.md'}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import json

    from .predict import load_predictor, predict

    _verify(args.checkpoint or args.weights, args.sha256)
    model, info = load_predictor(args.checkpoint, args.model, args.pretrained, args.weights, args.ema)
    results = predict(_on_engine(model, args.engine), info, args.images, args.topk)
    if args.format == "json":
        print(json.dumps(results, indent=2, allow_nan=False))  # valid JSON, always
        return 0
    for r in results:
        print(r["image"] + ": " + ", ".join(f"{t['label']} {100 * t['prob']:.1f}%" for t in r["top"]))
    return 0


def _on_engine(model: Any, engine: str) -> Any:
    from .engines import EngineModel

    return model if engine == "torch" else EngineModel(model, engine)


def _add_engine_option(p: argparse.ArgumentParser) -> None:
    from .engines import ENGINES

    p.add_argument("--engine", choices=ENGINES, default="torch",
                   help="what runs the model: eager PyTorch (default), its fused form (deploy), ONNX Runtime or OpenVINO "
                        "(float32, checked against eager PyTorch on the first batch; docs/results/engines says which is "
                        "fastest)")


def _cam(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .viz.tools import run_cam

    _verify(args.checkpoint, args.sha256)
    models = [(args.model, args.checkpoint), (args.baseline, args.baseline_checkpoint)]
    summary = run_cam(args.images, models, args.layer, args.class_index, Path(args.out), _command_line())
    for entry in summary["images"]:
        print(entry["image"] + ": " + "; ".join(f"{m['model']} -> {m['cls']} ({100 * m['prob']:.0f}%), map covers "
                                                f"{100 * m['coverage']:.0f}% of the image" for m in entry["models"]))
    print(f"wrote {len(summary['files'])} figures to {args.out} (contact_sheet.png, one *-cam.png per image, cam.json)")
    return 0


def _erf(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .viz.tools import ErfOptions, run_erf

    options = ErfOptions(args.data, args.data_dir, args.num_samples, args.input_size, args.stages, args.seed, args.device, args.inits)
    result = run_erf([(args.model, args.checkpoint), (args.baseline, args.baseline_checkpoint)], options, Path(args.out), _command_line())
    print(f"effective receptive fields over {result['inputs']}; share of the image holding 50% / 99% of the gradient:")
    for label, per_stage in result["ratios"].items():
        print(f"  {label}: " + ", ".join(f"{stage} {100 * r['50%']['area_ratio']:.1f}% / {100 * r['99%']['area_ratio']:.1f}%"
                                         for stage, r in per_stage.items()))
    print(f"report: {Path(args.out) / 'erf.md'}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .hostmem import keep_freed_memory_on_cpu
    from .train import fit, load_yaml, merge_config
    from .train.resume import resume_conflicts

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config", "debug")}
    yaml_values = load_yaml(args.config) if args.config else None
    cfg = merge_config(yaml_values, flags)
    if cfg.resume:  # what the user set, not the defaults, must agree with the run being resumed
        resume_conflicts(cfg.resume, {**(yaml_values or {}), **{k: v for k, v in flags.items() if v is not None}})
    keep_freed_memory_on_cpu()  # the tool's process-wide choice (the library leaves it to its callers)
    result = fit(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one report
        print(f"best val accuracy {result['best_val_acc']:.2f}% after {result['epochs']} epochs; run in {result['out']}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .hostmem import keep_freed_memory_on_cpu
    from .train import compare, load_yaml, merge_config
    from .train.compare import StudyPlan
    from .train.study_stats import describe_difference

    for flag, instead in (("model", "--models"), ("seed", "--seeds"), ("resume", "the same --out: a study resumes by itself")):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag} does not apply to a study; use {instead}")
    study = ("command", "func", "config", "debug", "models", "seeds", "until_resolved", "max_seeds", "erf_samples", "jobs",
             "train_sizes")
    flags = {k: v for k, v in vars(args).items() if k not in study}
    base = merge_config(load_yaml(args.config) if args.config else None, flags)
    out = Path(args.out or "runs/compare")
    plan = StudyPlan(args.models, args.seeds, args.until_resolved, args.max_seeds, args.erf_samples, args.jobs, args.train_sizes or ())
    keep_freed_memory_on_cpu()  # for the runs trained in this process; its workers are told to do the same
    if plan.train_sizes:  # one study per size: the same study, along the data
        from .train.curve import learning_curve

        _print_curve(learning_curve(base, plan, out, command=_command_line(), keep_memory=True))
        print(f"report: {out / 'report.md'}")
        return 0
    report = compare(base, plan, out, command=_command_line(), keep_memory=True)
    for name, entry in report["models"].items():
        spread = f" ± {entry['std']:.2f}" if entry["std"] is not None else ""
        print(f"{name:24s} {entry['mean']:6.2f}{spread} % ({len(entry['runs'])} seed(s))")
    print(describe_difference(report))
    print(f"report: {out / 'report.md'}")
    return 0


def _print_curve(report: dict) -> None:
    from .train.curve_report import describe_multiplier

    plain, sc = report["names"]
    print(f"{'images':>9s}  {plain:>18s}  {sc:>18s}  SC - plain  data multiplier")
    for p in report["curve"]["points"]:
        print(f"{p['size']:9,d}  {p['plain']['mean']:18.2f}  {p['sc']['mean']:18.2f}  {p['diff']['mean']:+9.2f}  "
              f"{describe_multiplier(p['multiplier'])}")


def _verify(path: str | None, sha256: str | None) -> None:
    if sha256:
        from .models.weights import verify_sha256

        if not path:
            raise ValueError("--sha256 needs a file to check (--checkpoint or --weights)")
        verify_sha256(path, sha256)


def _eval(args: argparse.Namespace) -> int:
    from .train import evaluate_checkpoint

    _verify(args.checkpoint, args.sha256)

    r = evaluate_checkpoint(args.checkpoint, args.data, args.data_dir, args.limit_val, args.batch_size, args.workers, args.ema,
                            engine=args.engine)
    engine = "" if r["engine"] == "torch" else f" run by {r['engine']}"
    print(f"{r['model']} (epoch {r['epoch']}){engine} on {r['data']}: top-1 {r['acc']:.2f}% ({r['count']} images), loss {r['loss']:.4f}")
    return 0


def _shard(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data.sharding import shard_image_folder

    index = shard_image_folder(Path(args.folder), Path(args.out), args.shard_size, args.bad_images)
    splits = ", ".join(f"{sum(e['counts'])} {split} images in {len(e['shards'])} shards" for split, e in index["splits"].items())
    skipped = f" ({index['skipped_images']} unreadable files left out)" if index["skipped_images"] else ""
    print(f"{len(index['classes'])} classes: {splits}{skipped} -> {args.out}; train with --data wds:{args.out}")
    return 0


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """One flag per ``TrainConfig`` field, its help and choices from the field's metadata (``config.option``).

    Every default is None: "not given" lets the YAML file (or the run being resumed) decide.
    """
    import dataclasses
    import typing

    from .train import TrainConfig
    from .train.config import choices_of

    p.add_argument("--config", help="YAML file of options, or a bundled recipe such as imagenet/scnet50 (flags given here "
                                    "override it)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        flag = as_flag(f.name)
        help_text = meta["help"].format(default=f.default)
        if hints[f.name] is bool:  # --amp / --no-amp: either can override a YAML file
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        types = [hints[f.name], *typing.get_args(hints[f.name])]
        listed = next((typing.get_args(t)[0] for t in types if typing.get_origin(t) is list), None)  # list[int]: N values
        kind = listed or next(t for t in (int, float, str) if t in types)
        p.add_argument(flag, type=kind, nargs="+" if listed else None, choices=choices_of(f.name), help=help_text)


def _add_info_command(sub: Any) -> None:
    info = sub.add_parser("info", help="parameters, multiply-adds and published accuracy per model")
    info.add_argument("--models", default="*", help="shell-style pattern of model names (default: all)")
    info.add_argument("--input-size", type=_int_in(32, MAX_SIDE), default=224, help="square input side for the MAC count (default 224)")
    info.add_argument("--format", choices=("table", "markdown", "json"), default="markdown")
    info.set_defaults(func=_info)


def _add_export_command(sub: Any) -> None:
    from .int8 import DEFAULT_KEEP, KEEP_FP32
    from .models.resnet import STEM_TYPES

    exp = sub.add_parser("export", help="export a model to ONNX (checked with onnxruntime), TorchScript or safetensors weights")
    exp.add_argument("--model", help="model name, e.g. scnet50 (may be left out with a training checkpoint or release)")
    exp.add_argument("--checkpoint", help="weights to export: a training checkpoint or release, or bare weights for --model")
    exp.add_argument("--format", choices=("onnx", "torchscript", "safetensors", "hf"), default="onnx",
                     help="hf: a folder in timm's Hugging Face Hub layout (config.json + model.safetensors)")
    exp.add_argument("--out", required=True, help="output file (a folder for --format hf)")
    exp.add_argument("--num-classes", type=_int_in(1, 1_000_000), help="classifier size (default: the model's 1000)")
    exp.add_argument("--in-chans", type=_int_in(1, 64), help="input channels (default 3)")
    exp.add_argument("--stem-type", choices=STEM_TYPES, help="override the model's stem")
    exp.add_argument("--mean", type=float, nargs="+", help="the inputs' per-channel mean to record (default: the "
                     "checkpoint's, else the model's; bare weights of a 1-channel model get the mean of ImageNet's)")
    exp.add_argument("--std", type=float, nargs="+", help="the inputs' per-channel standard deviation to record (as --mean)")
    exp.add_argument("--check-sizes", type=_size, nargs="+", default=[(97, 130), (193, 257), (224, 224)],
                     help="HxW sizes at which onnxruntime is compared with PyTorch (default 97x130 193x257 224x224)")
    exp.add_argument("--rtol", type=_positive_float, default=1e-4, help="largest accepted relative error (default 1e-4)")
    exp.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    exp.add_argument("--int8", action="store_true", help="int8 ONNX (ONNX Runtime static quantization), calibrated on the "
                     "first --calibration-images of the model's training data or --calibration-data")
    exp.add_argument("--keep-fp32", choices=KEEP_FP32, default=DEFAULT_KEEP,
                     help="--int8: what stays in float: nothing (default), the calibration gate's sigmoid and product, the whole "
                     "calibration branch but K2, or all but the convolutions")
    exp.add_argument("--calibration-data", help="--int8: dataset name to calibrate on (default: the checkpoint's own)")
    exp.add_argument("--data-dir", help="--int8: that dataset's folder")
    exp.add_argument("--calibration-images", type=_int_in(1, 100_000), default=512,
                     help="--int8: how many images calibrate (default 512)")
    exp.set_defaults(func=_export)


def _add_bench_command(sub: Any) -> None:
    from .bench import DTYPES, MODES, Rounds

    bench = sub.add_parser("bench", help="throughput, latency and peak memory side by side with torchvision's resnet50")
    bench.add_argument("--models", nargs="+", default=["scnet50"], help="models to measure (default scnet50)")
    bench.add_argument("--modes", nargs="+", default=["eager", "deploy"], choices=tuple(MODES), metavar="MODE",
                       help="eager (NCHW), eager_cl, deploy_nchw (folding only), deploy_portable (+ channels_last), deploy (+ oneDNN "
                            "or cuDNN/Triton fusion), compiled (deploy + inductor with freezing), graph / deploy_graph (eager_cl / "
                            "deploy replayed as a CUDA graph, GPU only), train, train_cl, train_compiled; onnx, openvino, int8 "
                            "(ONNX Runtime), openvino_int8, each int8 one also as MODE_gate/_branch/_convs (what stays float), each ONNX one also as "
                            "MODE_fold, _merge, _split, _rw (the graph scnet.fast.onnx_form rewrites)")
    bench.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    bench.add_argument("--sizes", nargs="+", type=int, default=[224], help="square input sides (default 224)")
    bench.add_argument("--baseline", default="resnet50", help="measured alongside in the same process (default torchvision resnet50)")
    Rounds.add_options(bench)
    bench.add_argument("--device", default="cpu", help="cpu or cuda")
    bench.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    bench.add_argument("--breakdown", action="store_true",
                       help="instead of timing, profile each case: time per kernel (GPU) or operator (CPU), by category")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement (one process per case on CPU)")
    bench.add_argument("--keep-freed-memory", action="store_true",
                       help="let glibc keep freed memory for reuse while timing, as scnet train does on a CPU (every case alike)")
    bench.add_argument("--threads", type=_int_in(1, 4096), help="torch CPU threads (default: torch's choice)")
    bench.add_argument("--out", default="runs/bench", help="report folder (default runs/bench)")
    bench.set_defaults(func=_bench)


def _add_train_command(sub: Any) -> None:
    train = sub.add_parser("train", help="train a model (default: the demo SCNet on Fashion-MNIST)")
    _add_train_args(train)
    train.set_defaults(func=_train)


def _add_compare_command(sub: Any) -> None:
    cmp_ = sub.add_parser("compare", help="an SC model vs its plain twin, paired by seed: per-seed differences, 95%% interval, verdict")
    _add_train_args(cmp_)
    cmp_.add_argument("--models", nargs="+", default=["scnet_demo"], help="the SC model (its plain twin is added)")
    cmp_.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds run first, one pair each (default 0 1 2)")
    cmp_.add_argument("--until-resolved", type=float, metavar="HALF_WIDTH",
                      help="then add seeds until the 95%% interval of SC - plain excludes zero or is at most +-HALF_WIDTH points")
    cmp_.add_argument("--max-seeds", type=int, metavar="N", help="with --until-resolved: at most N pairs in all (default 10)")
    cmp_.add_argument("--erf-samples", type=int, default=0, metavar="N",
                      help="after training, the effective receptive fields of the first seed's pair over N validation images (default 0: off)")
    cmp_.add_argument("--train-sizes", nargs="+", type=int, metavar="N",
                      help="a learning curve: the study at each of these training-set sizes (random nested subsets, each "
                           "class its share, every run the steps of the whole set), with the data multiplier of SC")
    cmp_.add_argument("--jobs", type=int, default=1, choices=(1, 2),
                      help="2: train the two members of a pair at once, half of the torch threads each (default 1)")
    cmp_.set_defaults(func=_compare)


def _add_predict_command(sub: Any) -> None:
    pr = sub.add_parser("predict", help="top-k classes for image files")
    pr.add_argument("images", nargs="+", help="image files (any mode: grayscale, RGB, RGBA, palette, 16-bit, float in [0, 1])")
    pr.add_argument("--checkpoint", help="a checkpoint written by scnet train (carries classes and preprocessing)")
    pr.add_argument("--model", help="registered model with ImageNet classes, when no --checkpoint")
    pr.add_argument("--pretrained", action="store_true", help="load the published weights for --model")
    pr.add_argument("--weights", help="weights file (.pth/.safetensors) for --model")
    pr.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    pr.add_argument("--topk", type=int, default=3)
    pr.add_argument("--format", choices=("text", "json"), default="text")
    _add_engine_option(pr)
    pr.set_defaults(func=_predict)


def _add_cam_command(sub: Any) -> None:
    cam = sub.add_parser("cam", help="Grad-CAM maps of images, the SC model beside its baseline")
    cam.add_argument("images", nargs="+", help="image files (any mode and size)")
    cam.add_argument("--model", help="model name (ours, torchvision's or timm's); with --checkpoint, its weights")
    cam.add_argument("--checkpoint", help="a training checkpoint or release (carries the model), or weights for --model")
    cam.add_argument("--baseline", help="the model to compare with, e.g. scnet50_plain or resnet50")
    cam.add_argument("--baseline-checkpoint", help="the baseline's training checkpoint, or weights for --baseline")
    cam.add_argument("--layer", help="submodule whose maps are weighted (default: the last stage, layer4)")
    cam.add_argument("--class", dest="class_index", type=_int_in(0, 1_000_000), help="explain this class index (default: each image's prediction)")
    cam.add_argument("--out", default="runs/cam", help="output folder (default runs/cam)")
    cam.set_defaults(func=_cam)


def _add_erf_command(sub: Any) -> None:
    erf = sub.add_parser("erf", help="effective receptive fields per stage, the SC model beside its baseline")
    erf.add_argument("--model", help="model name (ours, torchvision's or timm's); with --checkpoint, its weights")
    erf.add_argument("--checkpoint", help="a training checkpoint or release (carries the model), or weights for --model")
    erf.add_argument("--baseline", help="the model to compare with, e.g. scnet_demo_plain or resnet50")
    erf.add_argument("--baseline-checkpoint", help="the baseline's training checkpoint, or weights for --baseline")
    erf.add_argument("--data", help="average over this dataset's validation images (default: standard-normal noise)")
    erf.add_argument("--data-dir", help="dataset folder")
    erf.add_argument("--num-samples", type=_int_in(1, 100_000), default=64, help="images to average over (default 64)")
    erf.add_argument("--input-size", type=_int_in(8, MAX_SIDE), help="square input side (default: the dataset's or the model's); images are resized")
    erf.add_argument("--stages", nargs="+", help="submodules to measure (default: layer1 .. layer4)")
    erf.add_argument("--seed", type=_int_in(0, 2**63 - 1), default=0, help="seed of the noise and of the initial weights of models built by name (default 0)")
    erf.add_argument("--inits", type=_int_in(1, 1000), default=1, help="average models built by name over this many initialisations (default 1)")
    erf.add_argument("--device", default="cpu")
    erf.add_argument("--out", default="runs/erf", help="output folder (default runs/erf)")
    erf.set_defaults(func=_erf)


def _add_eval_command(sub: Any) -> None:
    ev = sub.add_parser("eval", help="accuracy of a training checkpoint")
    ev.add_argument("--checkpoint", required=True, help="a checkpoint written by scnet train")
    ev.add_argument("--data", help="dataset name (default: the one it was trained on)")
    ev.add_argument("--data-dir", help="dataset folder")
    ev.add_argument("--limit-val", type=_int_in(1, 10**9), help="use only N validation images (as scnet train's)")
    ev.add_argument("--batch-size", type=int, help="default: the training batch size")
    ev.add_argument("--workers", type=_int_in(0, 256), default=0, help="data-loading processes (default 0)")
    ev.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    _add_engine_option(ev)
    ev.set_defaults(func=_eval)


def _add_shard_command(sub: Any) -> None:
    from .data import BAD_IMAGE_POLICIES
    from .data.sharding import DEFAULT_SHARD_SIZE

    sh = sub.add_parser("shard", help="write an image folder tree (train/<class>/*, val/<class>/*) as WebDataset shards")
    sh.add_argument("folder", help="the image folder tree (as --data imagefolder --data-dir reads)")
    sh.add_argument("out", help="folder for train-NNNNNN.tar, val-NNNNNN.tar and info.json (the classes and each shard's length)")
    sh.add_argument("--shard-size", type=_int_in(1, 10**9), default=DEFAULT_SHARD_SIZE,
                    help=f"images per shard (default {DEFAULT_SHARD_SIZE})")
    sh.add_argument("--bad-images", choices=BAD_IMAGE_POLICIES, default="error",
                    help="stop at an unreadable image file (default) or leave them out")
    sh.set_defaults(func=_shard)


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    parser = argparse.ArgumentParser(prog="scnet", description="Self-calibrated convolutions and the SCNet family.")
    parser.add_argument("--version", action="version", version=f"scnet {__version__} (distribution scnet-pytorch)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info_command, _add_export_command, _add_bench_command, _add_train_command, _add_compare_command, _add_predict_command, _add_cam_command, _add_erf_command, _add_eval_command,
                _add_shard_command):
        add(sub)
    for name in ("export", "predict", "eval", "cam"):
        sub.choices[name].add_argument("--sha256", help="refuse the weight file unless its sha256 starts with these hex digits (8 to 64)")
    for p in sub.choices.values():
        p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .models.weights import WeightsUnavailableError
    from .train.peers import PeerFailed, one_line, process_rank

    if args.debug:
        return args.func(args)
    rank = process_rank()
    who = "" if rank is None else f"rank {rank}: "  # in a multi-process run every line says which process it is
    try:
        return args.func(args)
    except PeerFailed as e:  # another process of the run failed; the message names it and its cause
        print(f"scnet {args.command}: error: {_worded(e)}", file=sys.stderr)
        return 1
    # User mistakes, a missing extra, weights that cannot be had (offline): one line.
    except (ValueError, FileNotFoundError, FloatingPointError, ImportError, WeightsUnavailableError) as e:
        print(f"scnet {args.command}: error: {who}{_worded(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk or a vanished folder while writing: the message says what was kept
        where = f" ({e.filename})" if e.filename and str(e.filename) not in str(e.strerror) else ""
        print(f"scnet {args.command}: error: {who}{e.strerror or e}{where}", file=sys.stderr)
        return 1
    except Stopped as e:  # SIGTERM/SIGINT: what was kept (a checkpoint, a cache) and how to go on
        print(f"scnet {args.command}: {who}{_worded(e)}", file=sys.stderr)
        return 128 + e.signum
    except Exception as e:  # a bug, or an error of the machine: its traceback, then (with many processes) one line
        if rank is None:
            raise
        import traceback

        traceback.print_exc()
        print(f"scnet {args.command}: error: {who}{one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
