"""The statistics of a learning curve (``scnet compare --train-sizes``): pure functions over per-size, per-seed results.

At every training-set size the SC model and its plain twin were trained in pairs sharing a seed (the subset, the
data order, the augmentation). Per size: each model's mean with its 95 % t-interval and the paired difference
(``study_stats.paired_interval``). Across sizes: the **data multiplier**, how many training images the plain twin
needs to reach the accuracy SC reaches with N, read off the plain twin's curve interpolated linearly in log N
between measured sizes, with an interval from resampling each size's pairs.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from .study_stats import paired_interval

__all__ = ["BOOTSTRAP_DRAWS", "curve_summary", "data_multiplier", "images_needed", "multiplier_interval"]

BOOTSTRAP_DRAWS = 2000


def images_needed(sizes: Sequence[float], accuracies: Sequence[float], target: float) -> tuple[float, str]:
    """How many images a model whose accuracy at ``sizes`` (ascending) is ``accuracies`` needs to reach ``target``.

    Returns ``(n, "at")`` with ``n`` interpolated linearly in log size on the first segment that reaches the target
    (a curve that dips and climbs again is read at its first crossing); ``(sizes[0], "below")`` when the smallest
    size already reaches it (it needs at most that many: the curve says nothing below its first size); and
    ``(sizes[-1], "beyond")`` when no measured size reaches it.
    """
    if len(sizes) != len(accuracies) or not sizes:
        raise ValueError(f"a curve needs one accuracy per size, got {len(sizes)} sizes and {len(accuracies)} accuracies")
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise ValueError(f"sizes must ascend, got {list(sizes)}")
    if accuracies[0] >= target:
        return float(sizes[0]), "below"
    for (n0, a0), (n1, a1) in zip(zip(sizes, accuracies), zip(sizes[1:], accuracies[1:])):
        if a0 < target <= a1:
            share = (target - a0) / (a1 - a0)
            return math.exp(math.log(n0) + share * (math.log(n1) - math.log(n0))), "at"
    return float(sizes[-1]), "beyond"


def data_multiplier(sizes: Sequence[int], plain: Sequence[float], sc: Sequence[float]) -> list[dict[str, Any]]:
    """Per size N: the images the plain twin needs to reach SC's accuracy at N, as a multiple of N.

    ``plain`` and ``sc`` are the models' accuracies (seed means) at ``sizes``. ``bound`` says how to read
    ``multiplier``: "=" measured, "<=" at most (the plain twin's smallest size already gets there), ">" more than
    (the plain twin never gets there within the measured sizes).
    """
    rows = []
    for size, target in zip(sizes, sc):
        needed, where = images_needed(sizes, plain, target)
        bound = {"at": "=", "below": "<=", "beyond": ">"}[where]
        rows.append(dict(size=size, sc=target, plain_needs=needed, multiplier=needed / size, bound=bound))
    return rows


def _log_multipliers(sizes: Sequence[int], plain: Sequence[float], sc: Sequence[float]) -> list[float]:
    """log of each size's multiplier, -inf / +inf where the curve only bounds it from above / below."""
    signed = {"=": lambda m: math.log(m), "<=": lambda m: -math.inf, ">": lambda m: math.inf}
    return [signed[r["bound"]](r["multiplier"]) for r in data_multiplier(sizes, plain, sc)]


def multiplier_interval(sizes: Sequence[int], pairs: Sequence[Sequence[tuple[float, float]]], draws: int = BOOTSTRAP_DRAWS,
                        seed: int = 0) -> list[dict[str, Any]]:
    """A 95 % percentile-bootstrap interval of every size's multiplier: each size's (plain, SC) pairs are resampled
    with replacement (a pair stays a pair, since both runs share the seed's subset and order), independently per size,
    and the multipliers recomputed from the resampled means. An end where the resampled curve only bounds the
    multiplier is reported as that bound (``low_bound`` "<=": below the smallest size; ``high_bound`` ">": beyond
    the largest). Seeded: the same results give the same interval."""
    rng = np.random.default_rng(seed)
    samples = np.empty((draws, len(sizes)))
    arrays = [np.asarray(p, dtype=float) for p in pairs]  # (pairs, 2): plain, sc
    for d in range(draws):
        means = [a[rng.integers(0, len(a), len(a))].mean(axis=0) for a in arrays]
        samples[d] = _log_multipliers(sizes, [m[0] for m in means], [m[1] for m in means])
    rows = []
    for i, size in enumerate(sizes):
        low, high = np.quantile(samples[:, i], [0.025, 0.975], method="inverted_cdf")  # sample values: no inf - inf
        rows.append(dict(size=size, low=_end(low, sizes, size), low_bound=_bound(low), high=_end(high, sizes, size),
                         high_bound=_bound(high)))
    return rows


def _bound(log_value: float) -> str:
    return "<=" if log_value == -math.inf else ">" if log_value == math.inf else "="


def _end(log_value: float, sizes: Sequence[int], size: int) -> float:
    """An interval end as a multiplier: the bound itself where the curve gives only a bound."""
    if math.isinf(log_value):
        return (sizes[0] if log_value < 0 else sizes[-1]) / size
    return math.exp(log_value)


def _model_interval(values: Sequence[float]) -> dict[str, Any]:
    interval = paired_interval(values)  # a one-sample t-interval of the mean: the same formula
    return dict(mean=interval["mean_diff"], sd=interval["sd"], half_width=interval["half_width"], ci95=interval["ci95"], n=len(values))


def curve_summary(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Everything the report shows, from ``points``: one per size, ascending, each ``{"size", "pairs": [{"seed",
    "plain", "sc"}, ...]}`` (final accuracies, percent). Per size the two models' means and intervals and the paired
    difference; across sizes the multiplier with its bootstrap interval, and the size where SC - plain is largest."""
    sizes = [p["size"] for p in points]
    rows = []
    for point in points:
        plain, sc = [q["plain"] for q in point["pairs"]], [q["sc"] for q in point["pairs"]]
        diff = paired_interval([b - a for a, b in zip(plain, sc)])
        rows.append(dict(size=point["size"], seeds=[q["seed"] for q in point["pairs"]], plain_values=plain, sc_values=sc,
                         plain=_model_interval(plain), sc=_model_interval(sc),
                         diff=dict(mean=diff["mean_diff"], half_width=diff["half_width"], ci95=diff["ci95"], n=diff["n"])))
    estimates = data_multiplier(sizes, [r["plain"]["mean"] for r in rows], [r["sc"]["mean"] for r in rows])
    intervals = multiplier_interval(sizes, [list(zip(r["plain_values"], r["sc_values"])) for r in rows])
    for row, estimate, interval in zip(rows, estimates, intervals):
        row["multiplier"] = {**{k: estimate[k] for k in ("plain_needs", "multiplier", "bound")},
                             **{k: interval[k] for k in ("low", "low_bound", "high", "high_bound")}}
    largest: Optional[dict[str, Any]] = max(rows, key=lambda r: r["diff"]["mean"]) if rows else None
    return dict(sizes=sizes, points=rows, largest_difference_at=largest["size"] if largest else None,
                pairs=sum(len(r["seeds"]) for r in rows))
