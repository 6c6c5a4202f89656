"""``compare``: the paper's claim in miniature, as a paired-seed experiment.

One SC model and its plain twin are trained with one recipe, seed by seed; both members of a pair share the seed,
hence the data order and the augmentation, so the per-seed difference SC - plain cancels most of what one seed
does to both. The report gives those differences, their mean with a Student t-interval, and a plain verdict;
optionally seeds are added until the interval resolves, and the effective receptive fields of the trained pair
are measured beside the accuracy. Report, study description and every finished run are written as they happen,
so an interrupted study resumes where it stopped.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..data import DataInfo, build_datasets
from ..files import write_text_atomically
from ..models import plain_twin, sc_twin
from ..models.weights import read_checkpoint
from ..profile import count_macs, count_params, describe_machine
from .config import TrainConfig
from .folder import own_folder
from .runner import TrainingStopped, build_model_for, fit

__all__ = ["StudyPlan", "compare", "paired_interval", "study_finished", "next_seed", "check_study_args", "verdict", "describe_difference"]

# Config keys that name one run or how it is kept, not how it is trained: the recipe is everything else.
RUN_KEYS = ("model", "seed", "out", "resume", "checkpoint_every")
DONE = "compare-run.json"  # written into a run directory once its training has finished
DEFAULT_MAX_SEEDS = 10
_ABSENT = object()
# What a study compares, per run: result key -> what it is. Accuracy always; the localization scores when the test
# set knows its objects' boxes (scnet.viz.localization). All in percent, so differences are in points.
METRICS = {"final_val_acc": ("accuracy", "test top-1 (%)"), "pointing": ("pointing", "Grad-CAM peak in the box (% of images)"),
           "energy_in_box": ("energy", "Grad-CAM energy in the box (%)")}


# ---- the statistics: pure functions ---------------------------------------------------------------------------
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
        raise ValueError(f"--seeds must be one or more integers >= 0, got {list(seeds)}")
    repeated = next((s for i, s in enumerate(seeds) if s in seeds[:i]), None)
    if repeated is not None:
        raise ValueError(f"--seeds repeats {repeated}: each seed is one pair of runs")
    if isinstance(erf_samples, bool) or not isinstance(erf_samples, int) or erf_samples < 0:
        raise ValueError(f"--erf-samples must be an integer >= 0, got {erf_samples!r}")
    if until_resolved is None:
        if max_seeds is not None:
            raise ValueError(f"--max-seeds {max_seeds} needs --until-resolved HALF_WIDTH (it caps the seeds that flag adds)")
        return None
    if isinstance(until_resolved, bool) or not isinstance(until_resolved, (int, float)) or not math.isfinite(until_resolved) \
            or until_resolved <= 0:
        raise ValueError(f"--until-resolved must be a positive half-width in accuracy points, got {until_resolved!r}")
    limit = max(DEFAULT_MAX_SEEDS, len(seeds)) if max_seeds is None else max_seeds
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 2:
        raise ValueError(f"--max-seeds must be an integer >= 2 (an interval needs two pairs), got {max_seeds!r}")
    if limit < len(seeds):
        raise ValueError(f"--max-seeds {limit} is fewer than the {len(seeds)} --seeds given")
    return limit


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
        raise ValueError(f"{where} holds {what}: {key} is {_shown(a)} there, {_shown(b)} here; nothing was changed, "
                         f"choose another --out")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} cannot be read ({e}); move it away or choose another --out") from e


def _run_name(model: str, seed: int) -> str:
    return f"{model}-seed{seed}"


def _saved_config(run: Path) -> Optional[dict[str, Any]]:
    """The config of the run a directory holds: a finished one's record, else an unfinished one's checkpoint."""
    if (run / DONE).is_file():
        return _read_json(run / DONE)["config"]
    if (run / "checkpoint-last.pth").is_file():
        return read_checkpoint(run / "checkpoint-last.pth").get("config", {})
    return None


def _check_out(out: Path, study: dict[str, Any]) -> None:
    """Refuse an output directory that holds another study, or a run this study would not have made: training on
    would overwrite it, and reusing it would mix two recipes in one report."""
    if (out / "study.json").is_file():
        saved = _read_json(out / "study.json")
        _refuse_other(out / "study.json", "another study", {"models": saved.get("models"), **saved.get("recipe", {})},
                      {"models": study["models"], **study["recipe"]})
    for run in sorted(p for p in out.iterdir() if p.is_dir()):
        config = _saved_config(run)
        if config is None:
            continue
        if config.get("model") not in study["models"] or run.name != _run_name(config["model"], config.get("seed")):
            raise ValueError(f"{run} holds a run of {config.get('model')!r} with seed {config.get('seed')!r}, not one of this "
                             f"study's ({' and '.join(study['models'])}); nothing was changed, choose another --out")
        _refuse_other(run, "a run with another recipe", _recipe(config), study["recipe"])


# ---- running ---------------------------------------------------------------------------------------------------
def _twins(models: Sequence[str]) -> list[str]:
    """[plain, SC] for the one SC model a study is about (naming it, its twin or both is the same study)."""
    sc = list(dict.fromkeys(sc_twin(m) for m in models))
    if len(sc) != 1:
        raise ValueError(f"--models: a study pairs one SC model with its plain twin, got {' '.join(models) or 'none'}; "
                         f"run one study per model")
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
        record = _read_json(run / DONE)
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


def _run_alone(config: dict[str, Any], threads: int, parent: int) -> dict[str, Any]:
    """``_run`` in a worker process with ``threads`` torch threads (no progress bar: two would interleave)."""
    import os
    import sys

    _follow_parent(parent)
    sys.stdout.reconfigure(line_buffering=True)  # each epoch's line shows as it ends, not when the process exits
    torch.set_num_threads(threads)
    try:
        return _run(TrainConfig(**config), show_progress=False)
    except TrainingStopped as stopped:
        if os.getppid() != parent:  # the study is gone and nobody waits for this worker: do not wait for more work
            sys.stdout.flush()
            os._exit(128 + stopped.signum)
        raise


def _run_pair(cfgs: Sequence[TrainConfig], show_progress: bool, jobs: int) -> list[dict[str, Any]]:
    """Both runs of a pair, one after the other, or at once in two processes with half the threads each.

    Why at once: both runs meet the same machine load, and small convolutions leave a second thread idle part of
    the time (for the demo pair the gain is small, ~5 %, since the plain run ends first and frees its core).
    """
    if jobs == 1 or any((Path(cfg.out) / DONE).is_file() for cfg in cfgs):  # a finished run is only read back
        return [_run(cfg, show_progress) for cfg in cfgs]
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, torch.get_num_threads() // jobs)
    print(f"training {', '.join(c.model for c in cfgs)} (seed {cfgs[0].seed}) at once, {threads} thread(s) each")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_run_alone, cfg.to_dict(), threads, os.getpid()) for cfg in cfgs]
        return [f.result() for f in futures]


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

    def checked(self) -> "StudyPlan":
        """The plan with its pair limit resolved; a plan that cannot run raises ``ValueError`` before anything is written."""
        limit = check_study_args(list(self.seeds), self.until_resolved, self.max_seeds, self.erf_samples)
        if self.jobs not in (1, 2):
            raise ValueError(f"--jobs must be 1 or 2 (the two members of a pair), got {self.jobs!r}")
        return replace(self, seeds=list(self.seeds), max_seeds=limit)


def compare(base: TrainConfig, plan: StudyPlan, out: Path, command: str = "", show_progress: bool = True) -> dict[str, Any]:
    """Train the SC model of ``plan.models`` and its plain twin, pair by pair, with ``base``'s recipe; report in ``out``.

    The ``plan.seeds`` run first; with ``until_resolved`` more seeds follow (see ``next_seed``) up to ``max_seeds``
    pairs in all (default 10). report.md/json/png are rewritten after every pair. With ``erf_samples`` > 0 the
    trained pair of the first seed has its effective receptive fields measured on that many validation images
    (``erf/``). ``jobs=2`` trains the two members of a pair at once, in two processes that share the torch threads.
    """
    plan = plan.checked()
    names = _twins(plan.models)
    study = dict(models=names, recipe=_recipe(base.to_dict()))
    with own_folder(out):  # one study per folder: a second one on it is refused while this one runs
        _check_out(out, study)
        try:
            return _run_study(base, plan, study, out, command, show_progress)
        except TrainingStopped as stopped:  # a run's own advice (--resume) does not apply to a study
            where = str(stopped).partition("; checkpoint written")[0]
            raise TrainingStopped(stopped.signum, f"{where}; checkpoint written: run the same scnet compare command again "
                                                  f"to continue the study") from None


def _run_study(base: TrainConfig, plan: StudyPlan, study: dict[str, Any], out: Path, command: str, show_progress: bool) -> dict[str, Any]:
    """``compare``'s work in a folder it holds: pair after pair, the report rewritten after each, then the figures."""
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
        for name, result in zip(names, _run_pair(cfgs, show_progress, plan.jobs)):
            report["models"][name]["runs"].append(result)
        report["seeds"].append(seed)
        report["threads_per_process"] = sorted({r["threads"] for e in report["models"].values() for r in e["runs"] if "threads" in r})
        _tally(report, names)
        seed = next_seed(seeds, report["seeds"], [p["diff"] for p in report["pairs"]], until_resolved, max_seeds)
        report["status"] = "running" if seed is not None else "done"
        _write_report(out, report)
    if plan.erf_samples:
        report["erf"] = _measure_erf(base, names, seeds[0], out, plan.erf_samples, command)
        _write_report(out, report)
    if len(report["metrics"]) > 1:
        report["cams"] = _cam_page(base, names, seeds[0], out)
        _write_report(out, report)
    return report


def _tally(report: dict[str, Any], names: Sequence[str]) -> None:
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


# ---- writing ---------------------------------------------------------------------------------------------------
def _write_report(out: Path, report: dict[str, Any]) -> None:
    write_text_atomically(out / "report.json", json.dumps(report, indent=2))
    _plot(out / "report.png", report)
    if len(report.get("metrics", {})) > 1:
        _plot_localization(out / "localization.png", report)
    write_text_atomically(out / "report.md", _markdown(report))


# The recipe keys every report shows, whether or not they are defaults (the defaults may change later).
RECIPE_KEYS = ("data", "epochs", "batch_size", "opt", "lr", "momentum", "weight_decay", "schedule", "warmup_epochs",
               "label_smoothing", "channels_last", "amp", "limit_train", "limit_val")


def _markdown(report: dict[str, Any]) -> str:
    """One page: how it was made, the models, the pairs, the difference and verdict, the figure, the ERF."""
    plain, sc = report["models"]
    defaults = TrainConfig().to_dict()
    changed = {k: v for k, v in report["recipe"].items() if v != defaults.get(k)}
    lines = [f"# {sc} vs {plain} (its plain twin) on {report['data']}, paired by seed", ""]
    if report["command"]:
        lines += [f"Command: `{report['command']}`", ""]
    shown = {k: report["recipe"][k] for k in RECIPE_KEYS if k in report["recipe"]}
    shown.update({k: v for k, v in changed.items() if k not in shown})
    threads = report.get("threads_per_process")
    lines += [f"Machine: {report['machine']}"
              + (f"; every training process ran {' or '.join(map(str, threads))} torch thread(s)" if threads else "") + ". "
              f"Recipe: {', '.join(f'{k}={v}' for k, v in shown.items())}.", ""]
    lines += _model_table(report) + [""] + _pair_table(report) + [""]
    lines += [describe_difference(report), ""] + _stopping_lines(report)
    lines += ["![per-seed accuracy, paired differences and validation curves](report.png)", ""]
    lines += _localization_lines(report)
    if "erf" in report:
        lines += _erf_lines(report)
    return "\n".join(lines) + "\n"


def _localization_lines(report: dict[str, Any]) -> list[str]:
    """Per seed, both models' localization scores and their differences; the interval and verdict of each."""
    keys = [k for k in report.get("metrics", {}) if k != "final_val_acc"]
    if not keys:
        return []
    plain, sc = report["models"]
    blocks = [report["metrics"][k] for k in keys]
    names = [b["name"] for b in blocks]
    lines = ["## Localization: the true class's Grad-CAM against the object's box, on every test image", "",
             "Pointing: the share of test images whose Grad-CAM peak lies inside the object's box (the pointing game). "
             "Energy: the mean share of the Grad-CAM's mass inside the box. Both of the true class, at the last stage, for "
             "each run's final weights.", "",
             "| seed | " + " | ".join(f"{n}: {plain} | {n}: {sc} | {n}: SC - plain" for n in names) + " |",
             "|---|" + "---|---|---|" * len(blocks)]
    for i, seed in enumerate(p["seed"] for p in blocks[0]["pairs"]):
        cells = [f"{b['pairs'][i]['plain']:.2f} | {b['pairs'][i]['sc']:.2f} | {b['pairs'][i]['diff']:+.2f}" for b in blocks]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, block in zip(names, blocks):
        lines += [f"**{name}** ({block['label']}): {plain} {block['plain_mean']:.2f}, {sc} {block['sc_mean']:.2f}. "
                  + describe_difference(block), ""]
    lines += ["![localization per seed and paired differences](localization.png)", ""]
    if report.get("cams"):
        lines += [f"Grad-CAM of the true class on the first test images (seed {report['cams']['seed']}), the object's box in white:", "",
                  f"![Grad-CAM pages]({report['cams']['png']})", ""]
    return lines


def _model_table(report: dict[str, Any]) -> list[str]:
    spread = len(report["seeds"]) > 1
    head = "test top-1 (%), mean ± std" if spread else "test top-1 (%)"
    lines = [f"| model | params | MMACs / image | {head} | train time / run (s) |", "|---|---|---|---|---|"]
    for name, e in report["models"].items():
        acc = f"{e['mean']:.2f} ± {e['std']:.2f}" if spread else f"{e['mean']:.2f}"
        lines.append(f"| {name} | {e['params']:,} | {e['macs'] / 1e6:.1f} | {acc} | {e['train_seconds']:.1f} |")
    return lines


def _pair_table(report: dict[str, Any]) -> list[str]:
    """Same seed, same data order and augmentation: the pairs, not just the means, are what is compared."""
    plain, sc = report["models"]
    lines = [f"| seed | {plain} (%) | {sc} (%) | SC - plain (points) |", "|---|---|---|---|"]
    lines += [f"| {p['seed']} | {p['plain']:.2f} | {p['sc']:.2f} | {p['diff']:+.2f} |" for p in report["pairs"]]
    return lines


def _stopping_lines(report: dict[str, Any]) -> list[str]:
    n, until, limit = len(report["pairs"]), report["until_resolved"], report["max_seeds"]
    if until is None:
        return [f"Seeds: {', '.join(map(str, report['seeds']))}, chosen in advance.", ""] if report["status"] == "done" else \
            [f"In progress: {n} pair(s) done so far.", ""]
    state = f"stopped after {n} pairs" if report["status"] == "done" else f"in progress, {n} pair(s) done"
    if report["status"] == "done" and not study_finished([p["diff"] for p in report["pairs"]], until):
        state += " (the --max-seeds limit)"
    return [f"Stopping rule: seeds were added until the 95 % interval excluded zero or its half-width was at most "
            f"{until:g} points, up to {limit} pairs; {state}. Stopping on the data makes a spurious exclusion of zero "
            f"somewhat likelier than the nominal 5 %.", ""]


def _erf_lines(report: dict[str, Any]) -> list[str]:
    """The ERF beside the accuracy: per stage, the share of the image holding 50 % and 99 % of the gradient."""
    erf = report["erf"]
    plain, sc = report["models"]
    lines = [f"## Effective receptive field (seed {erf['seed']}, final weights, {erf['inputs']})", "",
             "Share of the image (smallest centred square) holding 50 % / 99 % of the centre unit's input gradient:", "",
             f"| stage | {sc} 50 % | {plain} 50 % | {sc} 99 % | {plain} 99 % |", "|---|---|---|---|---|"]
    for stage, by_model in erf["stages"].items():
        cells = [f"{100 * by_model[m][k]:.1f}%" for k in ("50%", "99%") for m in (sc, plain)]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return lines + ["", f"![ERF heatmaps per stage]({erf['png']})", "", f"Also at 20 % and 30 %: [{erf['report']}]({erf['report']}).", ""]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot(path: Path, report: dict[str, Any]) -> None:
    """Left: per-seed accuracy, pairs joined; middle: the differences with mean and 95 % CI; right: mean curves."""
    plt = _pyplot()
    names = list(report["models"])
    colors = {names[0]: "tab:gray", names[1]: "tab:blue"}
    with plt.rc_context({"font.size": 12, "axes.titlesize": 13, "legend.fontsize": 11}):
        fig, axes = plt.subplots(1, 3, figsize=(16, 5.2), gridspec_kw=dict(width_ratios=(1, 1.2, 1.3)))
        _plot_pairs(axes[0], report["pairs"], names, colors, "test top-1 (%)", "final accuracy per seed (lines join a pair)")
        _plot_diffs(axes[1], report, "paired differences")
        _plot_curves(axes[2], report, colors)
        fig.suptitle(f"{names[1]} vs {names[0]} on {report['data']}, {len(report['pairs'])} seed pair(s)", fontsize=14)
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)


def _plot_localization(path: Path, report: dict[str, Any]) -> None:
    """One row per localization metric: per-seed values (pairs joined), then the paired differences."""
    plt = _pyplot()
    names = list(report["models"])
    colors = {names[0]: "tab:gray", names[1]: "tab:blue"}
    keys = [k for k in report["metrics"] if k != "final_val_acc"]
    with plt.rc_context({"font.size": 12, "axes.titlesize": 13, "legend.fontsize": 11}):
        fig, axes = plt.subplots(len(keys), 2, figsize=(12, 5.2 * len(keys)), squeeze=False, gridspec_kw=dict(width_ratios=(1, 1.3)))
        for row, key in zip(axes, keys):
            block = report["metrics"][key]
            _plot_pairs(row[0], block["pairs"], names, colors, block["label"], f"{block['name']} per seed (lines join a pair)")
            _plot_diffs(row[1], block, f"{block['name']}: paired differences")
        fig.suptitle(f"Localization of the true class's Grad-CAM, {names[1]} vs {names[0]} on {report['data']}", fontsize=14)
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)


def _plot_pairs(ax: Any, pairs: Sequence[dict[str, Any]], names: Sequence[str], colors: dict[str, str], ylabel: str, title: str) -> None:
    plain, sc = names
    for p in pairs:
        ax.plot([0, 1], [p["plain"], p["sc"]], "-", color="0.6", zorder=1)
    ax.scatter([0] * len(pairs), [p["plain"] for p in pairs], color=colors[plain], s=45, zorder=2)
    ax.scatter([1] * len(pairs), [p["sc"] for p in pairs], color=colors[sc], s=45, zorder=2)
    ax.set(xticks=[0, 1], xlim=(-0.4, 1.4), ylabel=ylabel, title=title)
    ax.set_xticklabels([plain, sc])
    ax.grid(axis="y", alpha=0.3)


def _plot_diffs(ax: Any, block: dict[str, Any], title: str) -> None:
    """``block``: paired values with their interval (a report's accuracy, or one of its ``metrics``)."""
    pairs = block["pairs"]
    ax.axhline(0.0, color="black", lw=1)
    ax.scatter(range(len(pairs)), [p["diff"] for p in pairs], color="tab:blue", s=45, zorder=3, label="one seed")
    mean_x = len(pairs) + 0.5
    if block["ci95"] is None:
        ax.scatter([mean_x], [block["mean_diff"]], color="tab:red", marker="D", s=55, zorder=3, label="mean (one seed: no interval)")
    else:
        ax.errorbar([mean_x], [block["mean_diff"]], yerr=[[block["half_width"]], [block["half_width"]]], fmt="D", color="tab:red",
                    capsize=8, lw=2, ms=8, zorder=3, label="mean, 95 % t-interval")
    ax.set_xticks([*range(len(pairs)), mean_x])
    ax.set_xticklabels([str(p["seed"]) for p in pairs] + ["mean"])
    ax.set(xlabel="seed", ylabel="SC - plain (points)", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def _plot_curves(ax: Any, report: dict[str, Any], colors: dict[str, str]) -> None:
    from matplotlib.ticker import MaxNLocator

    for name, entry in report["models"].items():
        curves = [r["curve"] for r in entry["runs"]]
        mean = [statistics.fmean(v) for v in zip(*curves)]
        ax.plot(range(1, len(mean) + 1), mean, "o-", color=colors[name], label=name)
    ax.set(xlabel="epoch", ylabel="test top-1 (%)", title="validation accuracy per epoch (seed mean)")
    epochs = max(len(r["curve"]) for e in report["models"].values() for r in e["runs"])
    ax.set_xlim(0.5, epochs + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
