"""The statistics of a paired-seed study (``scnet compare``): pure functions over per-seed results.

Both members of a pair share the seed (data order, augmentation), so the per-seed difference SC - plain cancels
most of what one seed does to both; its mean gets a Student t-interval, a verdict in words, and the rule that
decides whether another pair is needed.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Optional, Sequence

from ..errors import SettingError

__all__ = ["DEFAULT_MAX_SEEDS", "METRICS", "check_study_args", "describe_difference", "next_seed", "paired_interval",
           "study_finished", "tally", "verdict"]

DEFAULT_MAX_SEEDS = 10

# What a study compares, per run: result key -> what it is. Accuracy always; the localization scores when the test
# set knows its objects' boxes (scnet.viz.localization). All in percent, so differences are in points.
METRICS = {"final_val_acc": ("accuracy", "test top-1 (%)"), "pointing": ("pointing", "Grad-CAM peak in the box (% of images)"),
           "energy_in_box": ("energy", "Grad-CAM energy in the box (%)")}


def paired_interval(diffs: Sequence[float]) -> dict[str, Any]:
    """Mean of the paired differences with its 95 % Student t-interval, mean +- t(0.975, n-1) * sd / sqrt(n).

    The t quantile, not the normal 1.96: with a handful of seeds the sd is itself estimated from those few pairs,
    and the normal interval would be too narrow. One pair has no spread, hence no interval (sd, sem, t,
    half_width and ci95 are None).
    """
    n = len(diffs)
    if n == 0:
        raise ValueError("paired_interval needs at least one difference, got none")
    mean = statistics.fmean(diffs)
    if n == 1:
        return dict(n=1, mean_diff=mean, sd=None, sem=None, t=None, half_width=None, ci95=None)
    try:
        from scipy.stats import t as student_t
    except ImportError as e:
        raise ImportError("the paired t-interval needs scipy: pip install scipy") from e
    sd = statistics.stdev(diffs)
    sem = sd / math.sqrt(n)
    quantile = float(student_t.ppf(0.975, n - 1))
    half = quantile * sem
    return dict(n=n, mean_diff=mean, sd=sd, sem=sem, t=quantile, half_width=half, ci95=[mean - half, mean + half])


def _excludes_zero(interval: dict[str, Any]) -> bool:
    return interval["ci95"] is not None and (interval["ci95"][0] > 0 or interval["ci95"][1] < 0)


def study_finished(diffs: Sequence[float], half_width: float) -> bool:
    """The ``--until-resolved`` rule: an interval exists (two pairs or more) and it either excludes zero (the sign
    of the effect is settled) or is at most +-``half_width`` (the effect, whatever its sign, is known that well)."""
    if len(diffs) < 2:
        return False
    interval = paired_interval(diffs)
    return _excludes_zero(interval) or interval["half_width"] <= half_width


def next_seed(given: Sequence[int], done: Sequence[int], diffs: Sequence[float], until_resolved: Optional[float],
              max_seeds: Optional[int]) -> Optional[int]:
    """The seed of the next pair, or None when the study is over: the given seeds first, all of them; then, with
    ``until_resolved``, one past the largest seed so far until ``study_finished`` or ``max_seeds`` pairs."""
    if len(done) < len(given):
        return given[len(done)]
    if until_resolved is None or len(done) >= (max_seeds or 0) or study_finished(diffs, until_resolved):
        return None
    return max(done) + 1


def verdict(interval: dict[str, Any], until_resolved: Optional[float] = None) -> str:
    """What the interval says, in plain words."""
    if interval["ci95"] is None:
        return "one seed gives no interval: nothing is known about the noise, so no claim either way; run two seeds or more"
    low, high = interval["ci95"]
    if low > 0:
        return "SC ahead: the 95 % interval excludes zero"
    if high < 0:
        return "SC behind: the 95 % interval excludes zero"
    if until_resolved is not None and interval["half_width"] <= until_resolved:
        return (f"resolved to ±{interval['half_width']:.2f} points: the 95 % interval includes zero, so the two models are "
                f"within {max(abs(low), abs(high)):.2f} points of each other")
    return "not resolved: the 95 % interval includes zero"


def describe_difference(report: dict[str, Any]) -> str:
    """One sentence on SC - plain: the mean, its interval (from two pairs on) and the verdict."""
    if report["ci95"] is None:
        return f"SC - plain: {report['mean_diff']:+.2f} points from one seed. Verdict: {report['verdict']}."
    low, high = report["ci95"]
    return (f"SC - plain: mean {report['mean_diff']:+.2f} points, 95 % CI [{low:+.2f}, {high:+.2f}] (Student t-interval over "
            f"the {len(report['pairs'])} paired differences, t(0.975, {len(report['pairs']) - 1}) = {report['t']:.3f}). "
            f"Verdict: {report['verdict']}.")


def check_study_args(seeds: Sequence[int], until_resolved: Optional[float], max_seeds: Optional[int], erf_samples: int = 0) -> Optional[int]:
    """Refuse a study that cannot run as asked, before anything is written; returns the pair limit (None: just ``seeds``)."""
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise SettingError(f"{{seeds}} must be one or more integers >= 0, got {list(seeds)}", "seeds")
    repeated = next((s for i, s in enumerate(seeds) if s in seeds[:i]), None)
    if repeated is not None:
        raise SettingError(f"{{seeds}} repeats {repeated}: each seed is one pair of runs", "seeds")
    if isinstance(erf_samples, bool) or not isinstance(erf_samples, int) or erf_samples < 0:
        raise SettingError(f"{{erf_samples}} must be an integer >= 0, got {erf_samples!r}", "erf_samples")
    if until_resolved is None:
        if max_seeds is not None:
            raise SettingError(f"{{max_seeds}} {max_seeds} needs {{until_resolved}} HALF_WIDTH (it caps the seeds that setting adds)",
                               "max_seeds", "until_resolved")
        return None
    if isinstance(until_resolved, bool) or not isinstance(until_resolved, (int, float)) or not math.isfinite(until_resolved) \
            or until_resolved <= 0:
        raise SettingError(f"{{until_resolved}} must be a positive half-width in accuracy points, got {until_resolved!r}", "until_resolved")
    limit = max(DEFAULT_MAX_SEEDS, len(seeds)) if max_seeds is None else max_seeds
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 2:
        raise SettingError(f"{{max_seeds}} must be an integer >= 2 (an interval needs two pairs), got {max_seeds!r}", "max_seeds")
    if limit < len(seeds):
        raise SettingError(f"{{max_seeds}} {limit} is fewer than the {len(seeds)} {{seeds}} given", "max_seeds", "seeds")
    return limit


def tally(report: dict[str, Any], names: Sequence[str]) -> None:
    """Per-model means and the paired statistics of the runs so far, into ``report``: accuracy at the top level (as
    every report has it), and every metric of ``METRICS`` the runs have under ``report["metrics"]``."""
    for entry in report["models"].values():
        accs = [r["final_val_acc"] for r in entry["runs"]]
        entry.update(mean=statistics.fmean(accs), std=statistics.stdev(accs) if len(accs) > 1 else None,
                     train_seconds=statistics.fmean(r["train_seconds"] for r in entry["runs"]))
    plain, sc = (report["models"][n]["runs"] for n in names)
    report["metrics"] = {key: _paired(key, name, label, plain, sc, report["until_resolved"] if key == "final_val_acc" else None)
                         for key, (name, label) in METRICS.items() if all(key in r for r in (*plain, *sc))}
    accuracy = report["metrics"]["final_val_acc"]
    report["pairs"] = accuracy["pairs"]
    report.update({k: accuracy[k] for k in ("mean_diff", "sd", "sem", "t", "half_width", "ci95", "verdict")})


def _paired(key: str, name: str, label: str, plain: Sequence[dict[str, Any]], sc: Sequence[dict[str, Any]],
            until_resolved: Optional[float]) -> dict[str, Any]:
    """One metric of a study: per-seed values of both models, their differences, the interval and the verdict."""
    pairs = [dict(seed=a["seed"], plain=a[key], sc=b[key], diff=b[key] - a[key]) for a, b in zip(plain, sc)]
    interval = paired_interval([p["diff"] for p in pairs])
    spread = lambda v: statistics.stdev(v) if len(v) > 1 else None  # noqa: E731
    return dict(name=name, label=label, pairs=pairs, **{k: v for k, v in interval.items() if k != "n"},
                verdict=verdict(interval, until_resolved),
                plain_mean=statistics.fmean(p["plain"] for p in pairs), plain_std=spread([p["plain"] for p in pairs]),
                sc_mean=statistics.fmean(p["sc"] for p in pairs), sc_std=spread([p["sc"] for p in pairs]))
