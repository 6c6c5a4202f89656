"""The model table: parameters, multiply-adds, weights, the authors' accuracy, parity and recipe of every model."""
from __future__ import annotations

import json
from typing import Sequence

import torch

from .models import PRETRAINED, create_model, list_models
from .models.scnet import OFFICIAL_CODE
from .profile import count_macs, count_params
from .train.config import bundled_configs

__all__ = ["model_table", "format_table"]

# The row keys, and the markdown/text header of each.
HEADERS = {"model": "model", "params": "params", "GMACs": "GMACs", "weights": "official weights",
           "top1": "authors' ImageNet top-1", "official": "vs the official code", "recipe": "bundled recipe"}


def model_table(pattern: str = "*", input_size: int = 224) -> list[dict]:
    """One row per model (multiply-adds for one ``input_size`` square image). Models are built on the meta device,
    so counting costs no memory or arithmetic.

    ``top1`` is the authors' reported ImageNet accuracy of their weights, not measured here; ``official`` says that
    the architecture's names, shapes and outputs are tested equal to the official code's (``tests/test_models.py``);
    ``recipe`` names the bundled training config (``scnet train --config``).
    """
    recipes = set(bundled_configs())
    rows = []
    for name in list_models(pattern):
        with torch.device("meta"):
            model = create_model(name)
        spec = PRETRAINED.get(name)
        rows.append(dict(
            model=name,
            params=count_params(model),
            GMACs=round(count_macs(model, (3, input_size, input_size)) / 1e9, 3),
            weights=spec.filename if spec else "-",
            top1=spec.top1 if spec else None,
            official="same outputs" if name in OFFICIAL_CODE else None,
            recipe=f"imagenet/{name}" if f"imagenet/{name}" in recipes else None,
        ))
    return rows


def format_table(rows: Sequence[dict], fmt: str = "markdown") -> str:
    if fmt == "json":
        return json.dumps(list(rows), indent=2)
    cells = [[f"{r['params']:,}" if c == "params" else ("-" if r[c] is None else str(r[c])) for c in HEADERS] for r in rows]
    headers = list(HEADERS.values())
    if fmt == "markdown":
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(headers)]
    fmt_row = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt_row(headers)] + [fmt_row(row) for row in cells])
