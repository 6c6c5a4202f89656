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

from ..data import build_datasets
from ..models.spec import ModelSpec
from ..errors import SettingError
from ..files import write_text_atomically
from ..hostmem import keep_freed_memory_on_cpu
from ..models import plain_twin, sc_twin
from ..files import read_checkpoint
from ..profile import count_macs, count_params, describe_machine
from .config import TrainConfig
from .folder import own_folder
from .runner import TrainingStopped, build_model_for, fit
from .study_report import write_report
from .study_stats import check_study_args, next_seed, tally

__all__ = ["CURVE_KIND", "StudyPlan", "compare", "study_folder"]

# Config keys that name one run or how it is kept, not how it is trained: the recipe is everything else.
# What differs between the runs of one study, or changes nothing they compute: not part of its recipe.
RUN_KEYS = ("model", "seed", "out", "resume", "checkpoint_every", "workers")
DONE = "compare-run.json"  # written into a run directory once its training has finished
CURVE_KIND = "learning curve"  # study.json's kind for a folder of one study per training-set size (``curve``)
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
    """A config saved by an earlier version, with the options added since at their defaults (which change nothing),
    and without the keys that have become a run's own since (``workers``: an earlier study recorded it)."""
    return {**{f.name: f.default for f in fields(TrainConfig) if f.name not in RUN_KEYS}, **_recipe(saved)}


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


def _sizes(base: TrainConfig, names: Sequence[str], info: ModelSpec) -> dict[str, dict[str, Any]]:
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

    _, val, _ = build_datasets(cfg.data, cfg.data_dir, 1, cfg.limit_val, cfg.image_size, cfg.download, 0, cfg.bad_images,
                              val_data=cfg.val_data)
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
    that many validation images (``erf/``); a plan with ``train_sizes`` is a learning curve's (``curve.learning_curve``,
    one of these studies per size). ``jobs=2`` trains the two members of a pair at once, in two processes that share
    the torch threads;
    ``keep_memory`` makes those processes keep freed memory on a CPU (``hostmem.keep_freed_memory_on_cpu``), the
    choice the caller made for its own.
    """
    plan = plan.checked()
    if plan.train_sizes:
        raise SettingError("{train_sizes} makes a learning curve: call scnet.train.curve.learning_curve", "train_sizes")
    names = _twins(plan.models)
    study = dict(models=names, recipe=_recipe(base.to_dict()))
    with study_folder(out):
        _check_out(out, study)
        return _run_study(base, plan, study, out, command, show_progress, keep_memory)


@contextlib.contextmanager
def study_folder(out: Path) -> Iterator[None]:
    """Hold ``out`` for one study (a second one on it is refused while this one runs); a run stopped by a signal is
    reported as the study's stop, with the study's advice (a run's own, ``resume``, does not apply to a study)."""
    with own_folder(out):
        try:
            yield
        except TrainingStopped as stopped:
            where = str(stopped).partition("; checkpoint written")[0]
            raise TrainingStopped(stopped.signum, f"{where}; checkpoint written: run the same scnet compare command again "
                                                  f"to continue the study") from None


def _run_study(base: TrainConfig, plan: StudyPlan, study: dict[str, Any], out: Path, command: str, show_progress: bool,
               keep_memory: bool, figures: bool = True) -> dict[str, Any]:
    """``compare``'s work in a folder it holds: pair after pair, the report rewritten after each, then the figures
    (``figures=False``: none, for a learning curve's rounds before its last)."""
    names, seeds, until_resolved, max_seeds = study["models"], plan.seeds, plan.until_resolved, plan.max_seeds
    # The datasets at their real size: a generated set is made (and cached) once here, not by both workers at once.
    _, _, info = build_datasets(base.data, base.data_dir, base.limit_train, base.limit_val, base.image_size, base.download, 0,
                                  val_data=base.val_data)
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

    _, val, info = build_datasets(base.data, base.data_dir, 1, count, base.image_size, base.download, 0, base.bad_images,
                                  val_data=base.val_data)
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


