"""Learning curves (``scnet compare --train-sizes``): the paired study of ``compare`` at several training-set sizes.

Each size is a study of its own in ``out/n{size}``, run by ``compare``'s machinery on a nested, stratified subset
(``TrainConfig.train_subset``) whose epochs keep the whole set's length, so only the data varies. The curve runs
seed by seed across all sizes, so that an interrupted curve has whole seeds, and continues where it stopped; its
report (``curve_report``) is built from every size's report in the folder, with the statistics of ``curve_stats``.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

from ..data import build_datasets
from ..errors import SettingError
from ..files import write_text_atomically
from ..profile import describe_machine
from .compare import (CURVE_KIND, StudyPlan, _check_out, _device, _percent, _read_json, _recipe, _refuse_other, _run_study,
                      _saved_config, _twins, study_folder)
from .config import TrainConfig
from .curve_report import write_curve_report
from .curve_stats import curve_summary

__all__ = ["learning_curve"]


def learning_curve(base: TrainConfig, plan: StudyPlan, out: Path, command: str = "", show_progress: bool = True,
                   keep_memory: bool = False) -> dict[str, Any]:
    """The study of ``plan.models`` (and its plain twin) with ``base``'s recipe at each of ``plan.train_sizes``;
    report in ``out`` (report.md/json/png, rewritten after every round). ``plan``'s seeds, rule, pair limit and jobs
    apply to every size (``compare``); sizes and seeds run by earlier calls on the folder stay in the report."""
    plan = plan.checked()
    if not plan.train_sizes:
        raise SettingError("{train_sizes}: a learning curve needs at least one training-set size", "train_sizes")
    names = _twins(plan.models)
    with study_folder(out):
        return _run_curve(base, plan, names, out, command, show_progress, keep_memory)


def _run_curve(base: TrainConfig, plan: StudyPlan, names: Sequence[str], out: Path, command: str, show_progress: bool,
               keep_memory: bool) -> dict[str, Any]:
    """Round after round, each size's next seed; then each size with its own rule (``until_resolved``) and figures."""
    if base.train_subset is not None:
        raise SettingError("give {train_sizes} or {train_subset}, not both: a curve draws one subset per size",
                           "train_sizes", "train_subset")
    identity = dict(kind=CURVE_KIND, models=list(names), recipe=_recipe(base.to_dict()))
    _check_curve_out(out, identity)
    pool = _check_sizes(base, plan.train_sizes)
    write_text_atomically(out / "study.json", json.dumps(identity, indent=2))
    for count in range(1, len(plan.seeds) + 1):
        first_seeds = replace(plan, seeds=plan.seeds[:count], until_resolved=None, max_seeds=None)
        for size in plan.train_sizes:
            if not set(first_seeds.seeds) <= _seeds_done(out / f"n{size}"):
                _size_study(base, first_seeds, names, size, out, command, show_progress, keep_memory, figures=False)
                # after every pair, so that what is published of a running curve holds each finished pair
                write_curve_report(out, _curve_report(base, names, out, pool, command, "running"))
    for size in plan.train_sizes:
        _size_study(base, plan, names, size, out, command, show_progress, keep_memory, figures=True)
    report = _curve_report(base, names, out, pool, command, "done")
    write_curve_report(out, report)
    return report


def _seeds_done(folder: Path) -> set[int]:
    """The seeds of the pairs a size's report holds (none before its first pair)."""
    return {p["seed"] for p in _size_report(folder / "report.json")["pairs"]} if (folder / "report.json").is_file() else set()


def _size_problem(report: Any) -> Optional[str]:
    """What makes a size's report not one ``_run_study`` wrote (None when it is): the values the curve reads."""
    if not isinstance(report, dict) or not isinstance(report.get("recipe"), dict) or not isinstance(report.get("pairs"), list):
        return "no recipe and pairs"
    size = report["recipe"].get("train_subset")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return f"its train_subset {str(size)[:20]} is not a size"
    for pair in report["pairs"]:
        if not isinstance(pair, dict) or isinstance(pair.get("seed"), bool) or not isinstance(pair.get("seed"), int) \
                or not (_percent(pair.get("plain")) and _percent(pair.get("sc"))):
            return f"its pair {str(pair)[:60]} is not a seed with two accuracies"
    models = report.get("models")
    if not isinstance(models, dict) or not all(isinstance(e, dict) and isinstance(e.get("params"), int) and
                                               isinstance(e.get("macs"), int) for e in models.values()):
        return "its models have no sizes"
    metrics = report.get("metrics", {})
    keys = ("name", "pairs", "plain_mean", "sc_mean", "mean_diff", "ci95")
    if not isinstance(metrics, dict) or not all(isinstance(m, dict) and all(k in m for k in keys) for m in metrics.values()):
        return "its metrics are not a study's"
    return None


def _size_report(path: Path) -> dict[str, Any]:
    """A size's report, checked; a damaged one is refused naming the file (its run records can rewrite it)."""
    report = _read_json(path)
    problem = _size_problem(report)
    if problem is not None:
        raise SettingError(f"{path} is not a report this tool wrote ({problem}); move it away and run the curve again: "
                           f"its runs' records rewrite it", "out")
    return report


def _check_curve_out(out: Path, identity: dict[str, Any]) -> None:
    """Refuse a folder that holds a study of one size, or a curve of other models or another recipe."""
    if (out / "study.json").is_file():
        saved = _read_json(out / "study.json")
        if saved.get("kind") != CURVE_KIND:
            raise SettingError(f"{out} holds a study of one training-set size, not a learning curve; nothing was changed, "
                               f"choose another {{out}}", "out")
        _refuse_other(out / "study.json", "another learning curve", {"models": saved.get("models"), **saved.get("recipe", {})},
                      {"models": identity["models"], **identity["recipe"]})
    runs = [p for p in out.iterdir() if p.is_dir() and _saved_config(p) is not None]
    if runs:
        raise SettingError(f"{out} holds the run {runs[0].name} of a study of one size; choose another {{out}}", "out")


def _check_sizes(base: TrainConfig, sizes: Sequence[int]) -> int:
    """The training set's length (after ``limit_train``), made once here for a generated set; every size must fit
    in it and hold at least one batch."""
    train, _, _ = build_datasets(base.data, base.data_dir, base.limit_train, base.limit_val, base.image_size, base.download, 0,
                                 base.bad_images, val_data=base.val_data)
    too_large = [n for n in sizes if n > len(train)]
    if too_large:
        raise SettingError(f"{{train_sizes}} {too_large[0]:,} is more than the {len(train):,} training images of {base.data}"
                           + (" (after {limit_train})" if base.limit_train else ""), "train_sizes", "limit_train")
    too_small = [n for n in sizes if n < base.batch_size]
    if too_small:
        raise SettingError(f"{{train_sizes}} {too_small[0]:,} is less than one batch of {base.batch_size}; use sizes of at least "
                           f"{{batch_size}}", "train_sizes", "batch_size")
    return len(train)


def _size_study(base: TrainConfig, plan: StudyPlan, names: Sequence[str], size: int, out: Path, command: str,
                show_progress: bool, keep_memory: bool, figures: bool) -> dict[str, Any]:
    sized = replace(base, train_subset=size)
    study = dict(models=list(names), recipe=_recipe(sized.to_dict()))
    folder = out / f"n{size}"
    folder.mkdir(exist_ok=True)
    _check_out(folder, study)
    print(f"learning curve: {size:,} training images, seed(s) {', '.join(map(str, plan.seeds))}")
    return _run_study(sized, plan, study, folder, command, show_progress, keep_memory, figures)


def _curve_report(base: TrainConfig, names: Sequence[str], out: Path, pool: int, command: str, status: str) -> dict[str, Any]:
    """The curve from every size's report in ``out`` (sizes run by earlier commands on this folder included)."""
    points, localization, models, machine = [], [], {}, describe_machine(_device())
    for path in out.glob("n*/report.json"):
        size_report = _size_report(path)
        size = size_report["recipe"]["train_subset"]
        points.append(dict(size=size, pairs=[{k: p[k] for k in ("seed", "plain", "sc")} for p in size_report["pairs"]]))
        blocks = {k: v for k, v in size_report.get("metrics", {}).items() if k != "final_val_acc"}
        if blocks:
            localization.append(dict(size=size, metrics=blocks))
        models = {n: {k: e[k] for k in ("params", "macs")} for n, e in size_report["models"].items()}
        machine = str(size_report.get("machine", machine))
    steps = base.epochs * (pool // base.batch_size)  # the training loop drops a last short batch
    return dict(kind=CURVE_KIND, data=base.data, names=list(names), models=models, recipe=_recipe(base.to_dict()),
                train_images=pool, epochs=base.epochs, steps_per_run=steps, images_per_run=steps * base.batch_size,
                command=command, machine=machine, status=status, curve=curve_summary(sorted(points, key=lambda p: p["size"])),
                localization=sorted(localization, key=lambda b: b["size"]))
