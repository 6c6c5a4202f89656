"""The model table: parameters, multiply-adds and published accuracy of every registered model."""
from __future__ import annotations

import json
from typing import Sequence

import torch

from .models import PRETRAINED, create_model, list_models
from .profile import count_macs, count_params

__all__ = ["model_table", "format_table"]

COLUMNS = ("model", "params", "GMACs", "input", "weights", "top1")


def model_table(pattern: str = "*", input_size: int = 224) -> list[dict]:
    """One row per model. Models are built on the meta device, so counting costs no memory or arithmetic."""
    rows = []
    for name in list_models(pattern):
        with torch.device("meta"):
            model = create_model(name)
        spec = PRETRAINED.get(name)
        rows.append(dict(
            model=name,
            params=count_params(model),
            GMACs=round(count_macs(model, (3, input_size, input_size)) / 1e9, 3),
            input=f"{input_size}x{input_size}",
            weights=spec.filename if spec else "-",
            top1=spec.top1 if spec else None,
        ))
    return rows


def format_table(rows: Sequence[dict], fmt: str = "markdown") -> str:
    if fmt == "json":
        return json.dumps(list(rows), indent=2)
    cells = [[f"{r['params']:,}" if c == "params" else ("-" if r[c] is None else str(r[c])) for c in COLUMNS] for r in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    fmt_row = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt_row(COLUMNS)] + [fmt_row(row) for row in cells])
