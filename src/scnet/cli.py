"""The ``scnet`` command line: argument parsing and dispatch only; the work lives in the library."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _info(args: argparse.Namespace) -> int:
    from .info import format_table, model_table

    rows = model_table(args.models, args.input_size)
    if not rows:
        print(f"scnet: no model matches {args.models!r}", file=sys.stderr)
        return 2
    print(format_table(rows, args.format))
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 97x130, got {text!r}") from None
    return h, w


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .export import check_onnx, export_onnx, export_torchscript
    from .models import create_model

    model = create_model(args.model, checkpoint_path=args.checkpoint, num_classes=args.num_classes,
                         in_chans=args.in_chans, stem_type=args.stem_type).eval()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "torchscript":
        export_torchscript(model, out)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): TorchScript, any batch and input size")
        return 0
    min_side = export_onnx(model, out, in_chans=model.in_chans)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): ONNX, dynamic batch/height/width, inputs >= {min_side}x{min_side}")
    if args.no_check:
        return 0
    sizes = [s for s in args.check_sizes if min(s) >= min_side]
    ok = True
    for row in check_onnx(model, out, sizes, in_chans=model.in_chans):
        good = row["rel_error"] <= args.rtol and row["argmax_equal"]
        ok &= good
        print(f"  onnxruntime vs PyTorch at {row['size']}: relative error {row['rel_error']:.2e}, "
              f"argmax {'equal' if row['argmax_equal'] else 'DIFFERS'} -> {'ok' if good else 'FAIL'}")
    if not args.checkpoint:
        print("  note: random weights; check a trained checkpoint (--checkpoint) for a meaningful comparison")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scnet", description="Self-calibrated convolutions and the SCNet family.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="parameters, multiply-adds and published accuracy per model")
    info.add_argument("--models", default="*", help="shell-style pattern of model names (default: all)")
    info.add_argument("--input-size", type=int, default=224, help="square input side for the MAC count (default 224)")
    info.add_argument("--format", choices=("table", "markdown", "json"), default="markdown")
    info.set_defaults(func=_info)

    exp = sub.add_parser("export", help="export a model to ONNX (checked with onnxruntime) or TorchScript")
    exp.add_argument("--model", required=True, help="registered model name, e.g. scnet50")
    exp.add_argument("--checkpoint", help="weights to export (.pth or .safetensors)")
    exp.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    exp.add_argument("--out", required=True, help="output file")
    exp.add_argument("--num-classes", type=int, help="classifier size (default: the model's 1000)")
    exp.add_argument("--in-chans", type=int, help="input channels (default 3)")
    exp.add_argument("--stem-type", choices=("", "deep", "small"), help="override the model's stem")
    exp.add_argument("--check-sizes", type=_size, nargs="+", default=[(97, 130), (193, 257), (224, 224)],
                     help="HxW sizes at which onnxruntime is compared with PyTorch (default 97x130 193x257 224x224)")
    exp.add_argument("--rtol", type=float, default=1e-4, help="largest accepted relative error (default 1e-4)")
    exp.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    exp.set_defaults(func=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "input_size", 32) < 32:
        print(f"scnet: --input-size must be at least 32, got {args.input_size}", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
