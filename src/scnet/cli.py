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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scnet", description="Self-calibrated convolutions and the SCNet family.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="parameters, multiply-adds and published accuracy per model")
    info.add_argument("--models", default="*", help="shell-style pattern of model names (default: all)")
    info.add_argument("--input-size", type=int, default=224, help="square input side for the MAC count (default 224)")
    info.add_argument("--format", choices=("table", "markdown", "json"), default="markdown")
    info.set_defaults(func=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "input_size", 32) < 32:
        print(f"scnet: --input-size must be at least 32, got {args.input_size}", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
