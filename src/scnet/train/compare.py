"""``compare``: the paper's claim in miniature, as a paired-seed experiment; this module runs it.

One SC model and its plain twin are trained with one recipe, seed by seed (one pair at a time, at once in two
processes with ``jobs=2``); finished runs are reused and unfinished ones continued, so an interrupted study resumes
where it stopped. The statistics are in ``study_stats``, the report in ``study_report``; beside the accuracy, the
effective receptive fields of the first pair and, when the test set has object boxes, every run's localization.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch

from ..data import DataInfo, build_datasets
from ..errors import SettingError
from ..files import write_text_atomically
from ..hostmem import keep_freed_memory_on_cpu
from ..models import plain_twin, sc_twin
from ..models.weights import read_checkpoint
from ..profile import count_macs, count_params, describe_machine
from .config import TrainConfig
from .folder import own_folder
from .runner import TrainingStopped, build_model_for, fit
from .study_report import write_report
from .curve_report import write_curve_report
from .curve_stats import curve_summary
from .study_stats import check_study_args, next_seed, tally

__all__ = ["CURVE_KIND", "StudyPlan", "compare"]

# Config keys that name one run or how it is kept, not how it is trained: the recipe is everything else.
RUN_KEYS = ("model", "seed", "out", "resume", "checkpoint_every")
DONE = "compare-run.json"  # written into a run directory once its training has finished
_ABSENT = object()


# ---- the study's identity: what an output directory may already hold --------------------------------------------
def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    """The training recipe of a config dict: what every run of one study shares."""
    return {k: v for k, v in config.items() if k not in RUN_KEYS}


def _first_difference(there: dict[str, Any], here: dict[str, Any]) -> Optional[tuple[str, Any, Any]]:
    for key in (*here, *(k for k in there if k not in here)):
        a, b = there.get(key, _ABSENT), here.get(key, _ABSENT)
        if a != b:
            return key, a, b
    return None


def _shown(value: Any) -> str:
    return "absent" if value is _ABSENT else repr(value)


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A config saved by an earlier version, with the options added since at their defaults (which change nothing)."""
    return {**{f.name: f.default for f in fields(TrainConfig) if f.name not in RUN_KEYS}, **saved}


def _refuse_other(where: Path, what: str, there: dict[str, Any], here: dict[str, Any]) -> None:
    """A one-line refusal naming the first key whose value differs, with both values."""
    difference = _first_difference(_with_defaults(there), here)
    if difference is not None:
        key, a, b = difference
        raise SettingError(f"{where} holds {what}: {key} is {_shown(a)} there, {_shown(b)} here; nothing was changed, "
                           f"choose another {{out}}", "out")


MAX_RECORD_BYTES = 16 << 20  # a study's records and reports are kilobytes; a curve's report a few hundred


def _read_json(path: Path) -> Any:
    """A study file's JSON: a regular file within MAX_RECORD_BYTES (a FIFO would block, /dev/zero fill memory)."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_RECORD_BYTES:
            raise OSError(f"not a regular file of at most {MAX_RECORD_BYTES >> 20} MB")
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SettingError(f"{path} cannot be read ({e}); move it away or choose another {{out}}", "out") from e


def _percent(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0.0 <= value <= 100.0  # NaN fails too


def _record_problem(record: Any) -> Optional[str]:
    """What makes a run record not one ``_run`` wrote (None when it is one): every value the study reads back is
    type- and range-checked, so a damaged record is refused, never averaged into a report."""
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict) or not isinstance(record.get("result"), dict):
        return "no config and result"
    config, result = record["config"], record["result"]
    if not isinstance(config.get("model"), str) or isinstance(config.get("seed"), bool) or not isinstance(config.get("seed"), int):
        return "its config names no model and seed"
    if result.get("seed") != config["seed"]:
        return f"its result's seed {str(result.get('seed'))[:20]} is not its config's {config['seed']}"
    for key in ("final_val_acc", "best_val_acc", *(k for k in ("pointing", "energy_in_box") if k in result)):
        if not _percent(result.get(key)):
            return f"its {key} {str(result.get(key))[:20]} is not a percentage"
    seconds = result.get("train_seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < float("inf"):
        return f"its train_seconds {str(seconds)[:20]} is not a duration"
    if not isinstance(result.get("curve", []), list) or not all(_percent(v) for v in result.get("curve", [])):
        return "its curve is not a list of percentages"
    return None


def _read_record(run: Path) -> dict[str, Any]:
    """A finished run's record (``compare-run.json``), checked; a damaged one is refused naming the file."""
    record = _read_json(run / DONE)
    problem = _record_problem(record)
    if problem is not None:
        raise SettingError(f"{run / DONE} is not a run record this tool wrote ({problem}); move {run} away to train that "
                           f"run again, or choose another {{out}}", "out")
    return record


def _run_name(model: str, seed: int) -> str:
    return f"{model}-seed{seed}"


def _saved_config(run: Path) -> Optional[dict[str, Any]]:
    """The config of the run a directory holds: a finished one's record, else an unfinished one's checkpoint."""
    if (run / DONE).is_file():
        return _read_record(run)["config"]
    if (run / "checkpoint-last.pth").is_file():
        return read_checkpoint(run / "checkpoint-last.pth").get("config", {})
    return None


def _check_out(out: Path, study: dict[str, Any]) -> None:
    """Refuse an output directory that holds another study, or a run this study would not have made: training on
    would overwrite it, and reusing it would mix two recipes in one report."""
    if (out / "study.json").is_file():
        saved = _read_json(out / "study.json")
        if saved.get("kind") == CURVE_KIND:
            raise SettingError(f"{out} holds a learning curve, not a study of one size; nothing was changed, choose another "
                               f"{{out}} (or add {{train_sizes}} to continue the curve)", "out", "train_sizes")
        _refuse_other(out / "study.json", "another study", {"models": saved.get("models"), **saved.get("recipe", {})},
                      {"models": study["models"], **study["recipe"]})
    for run in sorted(p for p in out.iterdir() if p.is_dir()):
        config = _saved_config(run)
        if config is None:
            continue
        if config.get("model") not in study["models"] or run.name != _run_name(config["model"], config.get("seed")):
            raise SettingError(f"{run} holds a run of {config.get('model')!r} with seed {config.get('seed')!r}, not one of this "
                               f"study's ({' and '.join(study['models'])}); nothing was changed, choose another {{out}}", "out")
        _refuse_other(run, "a run with another recipe", _recipe(config), study["recipe"])


# ---- running ---------------------------------------------------------------------------------------------------
def _twins(models: Sequence[str]) -> list[str]:
    """[plain, SC] for the one SC model a study is about (naming it, its twin or both is the same study)."""
    sc = list(dict.fromkeys(sc_twin(m) for m in models))
    if len(sc) != 1:
        raise SettingError(f"{{models}}: a study pairs one SC model with its plain twin, got {' '.join(models) or 'none'}; "
                           f"run one study per model", "models")
    return [plain_twin(sc[0]), sc[0]]


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sizes(base: TrainConfig, names: Sequence[str], info: DataInfo) -> dict[str, dict[str, Any]]:
    """Parameters and multiply-adds of each model, counted on the meta device (nothing allocated)."""
    sizes = {}
    for name in names:
        with torch.device("meta"):
            model = build_model_for(replace(base, model=name), info)
        sizes[name] = dict(params=count_params(model), macs=count_macs(model, (info.in_chans, info.image_size, info.image_size)))
    return sizes


def _run(cfg: TrainConfig, show_progress: bool) -> dict[str, Any]:
    """Train one (model, seed), or reuse the run an interrupted study left (``_check_out`` vouched for its recipe);
    then the localization scores of its final weights when the test set has object boxes."""
    run = Path(cfg.out)
    if (run / DONE).is_file():
        print(f"reusing the finished run {run}")
        record = _read_record(run)
    else:
        if (run / "checkpoint-last.pth").is_file():
            print(f"continuing the unfinished run {run}")
            cfg = replace(cfg, resume=str(run))
        start = time.perf_counter()
        metrics = fit(cfg, show_progress=show_progress)
        result = dict(seed=cfg.seed, final_val_acc=metrics["final_val_acc"], best_val_acc=metrics["best_val_acc"],
                      train_seconds=metrics["train_seconds"], wall_seconds=time.perf_counter() - start, curve=_val_curve(run),
                      threads=torch.get_num_threads())  # results are exact for one CPU kind and thread count
        record = dict(config=cfg.to_dict(), result=result)
        write_text_atomically(run / DONE, json.dumps(record, indent=2))
    if "pointing" not in record["result"]:  # a run finished before its scores (or by an earlier version)
        scores = _localization(cfg, run)
        if scores is not None:
            record["result"].update(scores)
            write_text_atomically(run / DONE, json.dumps(record, indent=2))
    return record["result"]


def _localization(cfg: TrainConfig, run: Path) -> Optional[dict[str, float]]:
    """Pointing game and energy share of the run's final weights (the ones its accuracy is of) on every test image,
    or None when the test set has no object boxes."""
    from ..load import load_model
    from ..viz.localization import localization

    _, val, _ = build_datasets(cfg.data, cfg.data_dir, 1, cfg.limit_val, cfg.image_size, cfg.download, 0, cfg.bad_images)
    if getattr(val, "boxes", None) is None:
        return None
    model = load_model(file=str(run / "checkpoint-last.pth")).model.to(_device())
    scores = localization(model, val)
    return dict(pointing=scores["pointing"], energy_in_box=scores["energy_in_box"])


def _follow_parent(parent: int) -> None:
    """Send this worker one SIGTERM when the study's process is gone, so a killed study leaves no run training on
    its own (and writing where the next study will): the run checkpoints at its next step and stops, and the next
    study continues it. A thread that watches the parent's pid rather than Linux's parent-death signal, which can
    arrive twice (once more per subreaper the worker is handed to) and a second SIGTERM ends a run at once."""
    import os
    import signal
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    if not any(t.name == "scnet-follow-study" for t in threading.enumerate()):  # one watcher, whatever runs here next
        threading.Thread(target=watch, name="scnet-follow-study", daemon=True).start()


def _run_alone(config: dict[str, Any], threads: int, parent: int, keep_memory: bool = False) -> dict[str, Any]:
    """``_run`` in a worker process with ``threads`` torch threads (no progress bar: two would interleave)."""
    import os
    import sys

    _follow_parent(parent)
    sys.stdout.reconfigure(line_buffering=True)  # each epoch's line shows as it ends, not when the process exits
    torch.set_num_threads(threads)
    if keep_memory:  # the caller's choice for its own process, made again in this one
        keep_freed_memory_on_cpu()
    try:
        return _run(TrainConfig(**config), show_progress=False)
    except TrainingStopped as stopped:
        if os.getppid() != parent:  # the study is gone and nobody waits for this worker: do not wait for more work
            sys.stdout.flush()
            os._exit(128 + stopped.signum)
        raise


def _run_pair(cfgs: Sequence[TrainConfig], show_progress: bool, jobs: int, keep_memory: bool = False) -> list[dict[str, Any]]:
    """Both runs of a pair, one after the other, or at once in two processes with half the threads each.

    Why at once: both runs meet the same machine load, and small convolutions leave a second thread idle part of
    the time (for the demo pair the gain is small, since the plain run ends first and frees its core).
    """
    if jobs == 1 or any((Path(cfg.out) / DONE).is_file() for cfg in cfgs):  # a finished run is only read back
        return [_run(cfg, show_progress) for cfg in cfgs]
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, torch.get_num_threads() // jobs)
    print(f"training {', '.join(c.model for c in cfgs)} (seed {cfgs[0].seed}) at once, {threads} thread(s) each")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_run_alone, cfg.to_dict(), threads, os.getpid(), keep_memory) for cfg in cfgs]
        with _sigterm_passed_to(pool):
            return [f.result() for f in futures]


@contextlib.contextmanager
def _sigterm_passed_to(pool: Any) -> Iterator[None]:
    """While a pair trains in ``pool``'s workers, SIGTERM to the study is passed on to them: each checkpoints at its
    next step and raises ``TrainingStopped``, which the study reports in one line (without this, the study died at
    once and only its workers' watch of their parent stopped them). SIGINT needs no passing: a terminal sends it
    to every process of the group, and a second one would end a worker before its checkpoint."""
    import os
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def pass_on(signum: int, frame: Any) -> None:
        for process in list(getattr(pool, "_processes", {}).values()):  # the executor's workers, by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)

    previous = signal.signal(signal.SIGTERM, pass_on)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _val_curve(run: Path) -> list[float]:
    import csv

    with open(run / "log.csv") as f:
        return [float(row["val_acc"]) for row in csv.DictReader(f)]


@dataclass(frozen=True)
class StudyPlan:
    """What to compare and for how long: the SC model(s) (their twins are added), the seeds run first, the
    ``--until-resolved`` rule and its pair limit, the ERF sample count, and how many runs train at once."""

    models: Sequence[str]
    seeds: Sequence[int]
    until_resolved: Optional[float] = None
    max_seeds: Optional[int] = None
    erf_samples: int = 0
    jobs: int = 1
    train_sizes: Sequence[int] = ()

    def checked(self) -> "StudyPlan":
        """The plan with its pair limit resolved; a plan that cannot run raises ``ValueError`` before anything is written."""
        limit = check_study_args(list(self.seeds), self.until_resolved, self.max_seeds, self.erf_samples)
        if self.jobs not in (1, 2):
            raise SettingError(f"{{jobs}} must be 1 or 2 (the two members of a pair), got {self.jobs!r}", "jobs")
        sizes = list(self.train_sizes or ())
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes) or len(set(sizes)) != len(sizes):
            raise SettingError(f"{{train_sizes}} must be distinct positive integers, got {sizes}", "train_sizes")
        if sizes and self.erf_samples:
            raise SettingError("{erf_samples} measures one pair of one study; a learning curve has a study per size: "
                               "run scnet erf on the runs you want", "erf_samples", "train_sizes")
        return replace(self, seeds=list(self.seeds), max_seeds=limit, train_sizes=sorted(sizes))


def compare(base: TrainConfig, plan: StudyPlan, out: Path, command: str = "", show_progress: bool = True,
            keep_memory: bool = False) -> dict[str, Any]:
    """Train the SC model of ``plan.models`` and its plain twin, pair by pair, with ``base``'s recipe; report in ``out``.

    The ``plan.seeds`` run first; with ``until_resolved`` more seeds follow (see ``next_seed``) up to ``max_seeds``
    pairs in all (default 10). report.md/json/png are rewritten after every pair. With ``erf_samples`` > 0 the
    trained pair of the first seed (whose weights are still there) has its effective receptive fields measured on
    that many validation images (``erf/``). With ``plan.train_sizes``, a learning curve: the study at each size
    (see ``_run_curve``), reported in ``out``. ``jobs=2`` trains the two members of a pair at once, in two processes that share the torch threads;
    ``keep_memory`` makes those processes keep freed memory on a CPU (``hostmem.keep_freed_memory_on_cpu``), the
    choice the caller made for its own.
    """
    plan = plan.checked()
    names = _twins(plan.models)
    with own_folder(out):  # one study per folder: a second one on it is refused while this one runs
        try:
            if plan.train_sizes:
                return _run_curve(base, plan, names, out, command, show_progress, keep_memory)
            study = dict(models=names, recipe=_recipe(base.to_dict()))
            _check_out(out, study)
            return _run_study(base, plan, study, out, command, show_progress, keep_memory)
        except TrainingStopped as stopped:  # a run's own advice (--resume) does not apply to a study
            where = str(stopped).partition("; checkpoint written")[0]
            raise TrainingStopped(stopped.signum, f"{where}; checkpoint written: run the same scnet compare command again "
                                                  f"to continue the study") from None


def _run_study(base: TrainConfig, plan: StudyPlan, study: dict[str, Any], out: Path, command: str, show_progress: bool,
               keep_memory: bool, figures: bool = True) -> dict[str, Any]:
    """``compare``'s work in a folder it holds: pair after pair, the report rewritten after each, then the figures
    (``figures=False``: none, for a learning curve's rounds before its last)."""
    names, seeds, until_resolved, max_seeds = study["models"], plan.seeds, plan.until_resolved, plan.max_seeds
    # The datasets at their real size: a generated set is made (and cached) once here, not by both workers at once.
    _, _, info = build_datasets(base.data, base.data_dir, base.limit_train, base.limit_val, base.image_size, base.download, 0)
    report = dict(data=info.name, models={n: dict(s, runs=[]) for n, s in _sizes(base, names, info).items()}, seeds=[],
                  recipe=study["recipe"], until_resolved=until_resolved, max_seeds=max_seeds, machine=describe_machine(_device()),
                  command=command)
    write_text_atomically(out / "study.json", json.dumps(study, indent=2))
    # Both members of a pair run back to back, so a slower stretch of the machine hits both alike, and an
    # interrupted study has whole pairs done.
    seed = next_seed(seeds, [], [], until_resolved, max_seeds)
    while seed is not None:
        cfgs = [replace(base, model=name, seed=seed, out=str(out / _run_name(name, seed)), resume=None).validate() for name in names]
        for name, result in zip(names, _run_pair(cfgs, show_progress, plan.jobs, keep_memory)):
            report["models"][name]["runs"].append(result)
        report["seeds"].append(seed)
        report["threads_per_process"] = sorted({r["threads"] for e in report["models"].values() for r in e["runs"] if "threads" in r})
        tally(report, names)
        seed = next_seed(seeds, report["seeds"], [p["diff"] for p in report["pairs"]], until_resolved, max_seeds)
        report["status"] = "running" if seed is not None else "done"
        report["other_seeds"] = _other_finished_seeds(names, report["seeds"], out)
        write_report(out, report)
    pictured = _first_with_weights(names, report["seeds"], out)
    if plan.erf_samples and pictured is not None:
        report["erf"] = _measure_erf(base, names, pictured, out, plan.erf_samples, command)
        write_report(out, report)
    if figures and len(report["metrics"]) > 1 and pictured is not None:
        report["cams"] = _cam_page(base, names, pictured, out)
        write_report(out, report)
    return report


def _other_finished_seeds(names: Sequence[str], seeds: Sequence[int], out: Path) -> list[int]:
    """Seeds whose pair the folder holds finished but this report leaves out (a study run again with fewer seeds)."""
    found = {int(p.name.rpartition("-seed")[2]) for p in out.glob(f"{names[1]}-seed*") if p.name.rpartition("-seed")[2].isdigit()}
    return sorted(s for s in found - set(seeds) if all((out / _run_name(n, s) / DONE).is_file() for n in names))


def _first_with_weights(names: Sequence[str], seeds: Sequence[int], out: Path) -> Optional[int]:
    """The first seed whose pair still has its final weights here: the one the figures show. A run continued from
    its committed record alone (``compare-run.json``, no checkpoint) has its numbers but no weights to picture."""
    return next((s for s in seeds if all((out / _run_name(n, s) / "checkpoint-last.pth").is_file() for n in names)), None)


# ---- learning curves: one study per training-set size ------------------------------------------------------------
CURVE_KIND = "learning curve"


def _run_curve(base: TrainConfig, plan: StudyPlan, names: Sequence[str], out: Path, command: str, show_progress: bool,
               keep_memory: bool) -> dict[str, Any]:
    """A study per size in ``out/n{size}``, each on a nested subset (``TrainConfig.train_subset``) with the steps of
    the whole set, run seed by seed across all sizes, so that an interrupted curve has whole seeds; then each size
    with its own rule (``--until-resolved``) and figures. The curve report is rewritten after every round."""
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
                                 base.bad_images)
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


def _measure_erf(base: TrainConfig, names: Sequence[str], seed: int, out: Path, samples: int, command: str) -> dict[str, Any]:
    """ERFs of the first seed's trained pair (final weights, the ones the accuracy is of), by ``scnet erf``'s code."""
    from ..viz.tools import ErfOptions, run_erf

    plain, sc = names
    weights = {n: out / _run_name(n, seed) / "checkpoint-last.pth" for n in names}
    options = ErfOptions(base.data, base.data_dir, samples, seed=seed, device=_device().type)
    result = run_erf([(None, str(weights[sc])), (None, str(weights[plain]))], options, out / "erf", command)
    stages = {}  # stage -> model -> {"50%": area ratio, "99%": area ratio}
    for name, ratios in zip((sc, plain), result["ratios"].values()):  # run_erf keeps the order: model, then baseline
        for stage, r in ratios.items():
            stages.setdefault(stage, {})[name] = {k: r[k]["area_ratio"] for k in ("50%", "99%")}
    return dict(inputs=result["inputs"], seed=seed, stages=stages, png="erf/erf.png", report="erf/erf.md")


def _cam_page(base: TrainConfig, names: Sequence[str], seed: int, out: Path, count: int = 8) -> dict[str, Any]:
    """Grad-CAM of the true class on the first ``count`` test images for the first seed's trained pair, with the
    object's box: what the localization scores score (``cams.png``)."""
    from ..load import load_model
    from ..viz.cam import gradcam
    from ..viz.localization import box_scores
    from ..viz.report import display_image, write_box_cams

    _, val, info = build_datasets(base.data, base.data_dir, 1, count, base.image_size, base.download, 0, base.bad_images)
    images, labels = val.batch(torch.arange(len(val)))
    boxes = val.boxes.numpy()
    columns = []
    for name in reversed(names):  # the SC model first, as in every other figure
        model = load_model(file=str(out / _run_name(name, seed) / "checkpoint-last.pth")).model.to(_device())
        result = gradcam(model, images.to(_device()), classes=labels.tolist())
        scores = box_scores(result.cams, boxes)
        captions = [f"p(true) {100 * p:.0f}%, {'hit' if h else 'miss'}, {100 * e:.0f}% in box"
                    for p, h, e in zip(result.probs, scores["pointing"], scores["energy"])]
        columns.append(dict(label=name, cams=result.cams, captions=captions))
    titles = [f"{info.classes[int(y)]} (test image {i})" for i, y in enumerate(labels)]
    write_box_cams(out / "cams.png", [display_image(x, info) for x in images], boxes, titles, columns,
                   f"Grad-CAM of the true class at {result.layer}, seed {seed}; white: the object's box")
    return dict(seed=seed, png="cams.png", images=len(labels))


