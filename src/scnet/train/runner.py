"""``fit``: a whole training run (data, model, optimiser, loop, logs, checkpoints, curves); ``evaluate_checkpoint``.

A run directory holds ``config.yaml`` (the resolved configuration), ``log.csv``, ``checkpoint-last.pth`` and
``checkpoint-best.pth`` (plain dicts: model, optimiser, schedule, EMA, epoch, history, config),
``metrics.json`` and ``curves.png``. ``--resume`` accepts the directory or a checkpoint file and continues
exactly where the last completed epoch left off.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import signal
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..data import DataInfo, TensorImages, build_datasets, nested_subset
from ..engines import EngineModel
from ..fast import fast_train
from ..files import read_checkpoint, release_metadata, write_release, write_text_atomically
from ..load import BareWeightsError, load_model, model_from_config
from ..models.weights import load_weights, pretrained_file, state_dict_of
from .config import ConfigError, TrainConfig
from .folder import copy_run, own_folder
from .records import plot_curves, tensorboard, write_log, yaml_text
from .peers import PeerFailed, shared_failures
from .signals import StopSignals, TrainingStopped
from .engine import (EpochBatches, EpochTotals, SeededSamples, StepParts, TensorBatches, check_finite_weights, evaluate,
                     reduce_totals, save_checkpoint, train_one_epoch, lr_schedule)

__all__ = ["TrainingStopped", "PeerFailed", "fit", "evaluate_checkpoint", "build_model_for", "resolve_resume", "resume_conflicts",
           "read_training_checkpoint", "RESUMABLE"]

SHORT_RUN_STEPS = 100  # below this many steps in all, a run is told it is too short to learn much


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model_for(cfg: TrainConfig, info: DataInfo) -> nn.Module:
    """The run's model with random weights (``scnet.load.model_from_config``); tests wrap it to train in float64."""
    return model_from_config(cfg.to_dict(), info)


def _init_distributed(timeout_s: float) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; a plain run is rank 0 of 1.

    ``timeout_s`` bounds every collective: a process that stops answering ends the run after that long at most.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        store = _restart_store(timeout)
        ranks = dict(rank=int(os.environ["RANK"]), world_size=world) if store is not None else {}
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout, store=store, **ranks)
    return dist.get_rank(), dist.get_world_size(), device


def _restart_store(timeout: timedelta) -> Optional[dist.Store]:
    """Under torchrun, the agent's store with the keys of each restart kept apart (None elsewhere: the default).

    torchrun's agent serves one store for every restart of a job, and the processes of a restarted group would
    read the addresses their predecessors left there and fail to connect ("Connection refused"). A key prefix
    per restart count isolates them. (torchrun counts a restart on every node when a process fails; where a node
    restarts only because another one re-joined, its count can lag: ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``
    gives every restart a fresh store instead.)
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    shared = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout)
    return dist.PrefixStore(f"scnet/restart-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", shared)


def _job_id() -> Optional[str]:
    """torchrun's id of this job (its --rdzv-id; a fresh one per --standalone launch), kept across its restarts;
    None outside torchrun and for torchrun's default id "none", which every job without --rdzv-id shares."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    return None if job in (None, "", "none") else job


# Settings a restart may differ in without being another run: where to resume, and the launch's own settings.
_LAUNCH_KEYS = ("resume", "dist_timeout")


def _restart_checkpoint(cfg: TrainConfig) -> Optional[tuple[Path, dict[str, Any]]]:
    """Under ``torchrun --max-restarts``, a restarted worker group's checkpoint to continue, and its contents: the last
    complete one this job wrote. None on a first attempt, without a job id (this job's checkpoint could not be told
    from another's), before a first checkpoint, or when the directory holds another job's run (the restart is then a
    fresh start, which refuses to overwrite it)."""
    job = _job_id()
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0 or job is None:
        return None
    last = (resolve_resume(cfg.resume).parent if cfg.resume else Path(cfg.out)) / "checkpoint-last.pth"
    if not last.is_file():
        return None
    state = read_checkpoint(last)
    same = cfg.resume or all(state["config"].get(k) == v for k, v in cfg.to_dict().items() if k not in _LAUNCH_KEYS)
    return (last, state) if state.get("job") == job and same else None


def resolve_resume(resume: str) -> Path:
    """A run directory (its checkpoint-last.pth) or a checkpoint file."""
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoint-last.pth"
    if not path.is_file():
        raise ConfigError(f"{{resume}} {resume}: no checkpoint found (looked for {path})", "resume")
    return path


def _check_out_writable(out: Path) -> None:
    """Fail before any work if ``out`` cannot be made or written, without creating anything yet."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output directory {out} is not writable ({existing} is not a directory)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {out} is not writable (no write permission on {existing})")


def _prepare_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output directory {out} is not writable ({e.strerror or e})") from e


def _loaders(cfg: TrainConfig, train_set, val_set, rank: int, world: int,
             epoch_length: Optional[int] = None) -> tuple[Any, Any, EpochBatches]:
    """Batches of seeded permutations, ``epoch_length`` items an epoch (default: the training set's length): gathered
    from memory for tensor datasets, else by a DataLoader."""
    length = epoch_length or len(train_set)
    sampler = EpochBatches(len(train_set), cfg.batch_size, shuffle=True, drop_last=length >= cfg.batch_size, seed=cfg.seed, rank=rank,
                           world=world, epoch_length=epoch_length)
    val_batches = EpochBatches(len(val_set), cfg.batch_size, shuffle=False, drop_last=False, rank=rank, world=world)
    if isinstance(train_set, TensorImages) and isinstance(val_set, TensorImages):
        return TensorBatches(train_set, sampler, cfg.seed, augment=True), TensorBatches(val_set, val_batches, cfg.seed, augment=False), sampler
    train_loader = DataLoader(SeededSamples(train_set, cfg.seed), batch_sampler=sampler, num_workers=cfg.workers)
    val_loader = DataLoader(val_set, batch_sampler=val_batches, num_workers=cfg.workers)
    return train_loader, val_loader, sampler


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on norms and biases (1-D parameters), as timm and torchvision's recipes, unless ``decay_all``
    # (the PyTorch ImageNet example the paper used decays every parameter).
    decay = [p for p in model.parameters() if p.ndim > 1 or cfg.decay_all]
    no_decay = [p for p in model.parameters() if p.ndim <= 1 and not cfg.decay_all]
    groups = [dict(params=decay, weight_decay=cfg.weight_decay), dict(params=no_decay, weight_decay=0.0)]
    if cfg.opt == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


def _check_run_directory(out: Path) -> None:
    """Refuse to start a fresh run over another run's checkpoints: say what is there and how to go on."""
    last = out / "checkpoint-last.pth"
    if not last.is_file():
        return
    try:
        state = read_checkpoint(last)
        done, steps = int(state.get("epoch", 0)), int(state.get("step", 0))
        planned = int(state.get("config", {}).get("epochs", 0))
    except (ValueError, OSError) as e:
        raise ConfigError(f"{out} holds a checkpoint that cannot be read ({e}); choose another {{out}}", "out") from e
    if done >= planned and not steps:
        raise ConfigError(f"{out} already holds a finished run ({done} epochs); choose another {{out}}, or continue it "
                          f"for more epochs with {{resume}} {out} {{epochs}} N", "out", "resume", "epochs")
    where = f"epoch {done + 1}, step {steps}" if steps else f"after epoch {done}"
    raise ConfigError(f"{out} holds an unfinished run (stopped {where} of {planned} epochs); continue it with "
                      f"{{resume}} {out}, or choose another {{out}}", "resume", "out")


@dataclass
class Run:
    """What a training run holds from one step to the next: where it is, what it trains, where it stands."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    log: Callable[..., None]
    show_progress: bool
    resumed: Optional[dict[str, Any]] = None  # the checkpoint being continued
    path: Optional[Path] = None  # its file
    start_epoch: int = 0
    start_step: int = 0
    totals: Optional[EpochTotals] = None  # the running sums of an epoch resumed mid-way
    history: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = -1.0
    info: Optional[DataInfo] = None
    train_set: Any = None
    epoch_length: Optional[int] = None  # with a training subset: the whole set's length, an epoch's items
    val_set: Any = None
    model: Optional[nn.Module] = None  # the plain module: evaluation, EMA and checkpoints use it
    parts: Optional[StepParts] = None  # what each step runs (parts.model may be DDP-wrapped or compiled)
    loaders: Optional[tuple[Any, Any, EpochBatches]] = None  # train, val, the train batches
    writer: Any = None

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def main_process(self) -> bool:
        return self.rank == 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loaders[2])

    def checkpoint(self, epoch: int, step: int = 0, epoch_totals: Optional[EpochTotals] = None) -> dict[str, Any]:
        """The whole state: ``epoch`` epochs done, then ``step`` steps of the next (with its running sums)."""
        p = self.parts
        ck = dict(model=self.model.state_dict(), optimizer=p.optimizer.state_dict(), scheduler=p.scheduler.state_dict(), epoch=epoch,
                  step=step, history=self.history, best_acc=self.best_acc, config=self.cfg.to_dict(), arch=self.cfg.model,
                  data_info=asdict(self.info), job=_job_id())
        if step:
            ck.update(epoch_totals=dict(epoch_totals), rng=torch.get_rng_state())
        if p.ema is not None:
            ck["model_ema"] = p.ema.module.state_dict()
        if p.scaler is not None:
            ck["scaler"] = p.scaler.state_dict()
        check_finite_weights(ck["model"], f"at epoch {epoch + (1 if step else 0)}, step {step}")
        return ck

    def check_step(self, epoch: int, stop: "StopSignals", t: EpochTotals) -> None:
        """After every step: a periodic mid-epoch checkpoint, or on a signal a checkpoint and ``TrainingStopped``."""
        signum = stop.agreed(self.device)
        every = self.cfg.checkpoint_every
        periodic = bool(every) and int(t["steps"]) % every == 0 and t["steps"] < self.steps_per_epoch
        if signum is None and not periodic:
            return
        ck = self.checkpoint(epoch, int(t["steps"]), reduce_totals(t, self.device))
        if self.main_process:
            save_checkpoint(ck, self.out / "checkpoint-last.pth")
        if signum is not None:
            raise TrainingStopped(signum, f"stopped by {signal.Signals(signum).name} at epoch {epoch + 1}, step {int(t['steps'])} of "
                                          f"{self.steps_per_epoch}; checkpoint written: continue with {{resume}} {self.out}", "resume")


def fit(cfg: TrainConfig, show_progress: bool = True, log: Any = print, stop_after_epoch: Optional[int] = None) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; returns the final metrics (also written to metrics.json).

    ``stop_after_epoch`` ends the run early while keeping the schedule of ``cfg.epochs`` (resume continues it).
    Checkpoints are written at every epoch end and, with ``cfg.checkpoint_every``, every N steps; SIGTERM or
    SIGINT writes one at the current step and raises ``TrainingStopped``. Resuming from any of them gives the
    weights an uninterrupted run would have had. Process-wide settings are the caller's: ``scnet train`` lets
    glibc keep freed memory on a CPU (``hostmem.keep_freed_memory``), a program of yours may call it too.
    """
    rank, world, device = _init_distributed(cfg.dist_timeout)
    with shared_failures(rank, world, cfg.dist_timeout):  # one process's failure ends the run on every process
        run = _start(cfg, rank, world, device, show_progress, log)
        with own_folder(run.out, run.log) if run.main_process else contextlib.nullcontext():  # one run per folder
            if run.main_process:
                _adopt_folder(run)
            _load_data(run)
            _build_training(run)
            _open_logs(run)
            with StopSignals() as stop:
                for epoch in range(run.start_epoch, min(run.cfg.epochs, stop_after_epoch or run.cfg.epochs)):
                    _train_epoch(run, epoch, stop)
            return _finish(run)


# Options a resumed run may take from the command line; every other one is the run's own (a different value is an
# error, ``resume_conflicts``): where it continues, for how long, how often it checkpoints, and where its data is.
RESUMABLE = ("resume", "out", "epochs", "checkpoint_every", "dist_timeout", "data_dir", "download", "workers", "fast_train")


def read_training_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint ``scnet train`` wrote, or a one-line error saying what the file is instead."""
    state = read_checkpoint(path)
    missing = [k for k in ("config", "model", "optimizer", "epoch", "history") if k not in state]
    if missing:
        kind = "released weights" if path.suffix == ".safetensors" else "a weights file"
        raise ConfigError(f"{{resume}} {path}: {kind}, not a training checkpoint of scnet train (no {missing[0]!r}): only "
                          f"checkpoint-last.pth or checkpoint-best.pth continue a run; start a new run from these weights "
                          f"with {{checkpoint}} {path}", "resume", "checkpoint")
    return state


def resume_conflicts(resume: str, given: dict[str, Any]) -> None:
    """Refuse options that contradict the run being resumed (one line naming the first): a run keeps its recipe.

    ``given``: the options the user set (flags and YAML), not the defaults.
    """
    saved = read_training_checkpoint(resolve_resume(resume))["config"]
    for key, value in given.items():
        if key not in RESUMABLE and value is not None and saved.get(key) != value:
            allowed = ", ".join("{" + k + "}" for k in RESUMABLE[1:])
            raise ConfigError(f"{{{key}}} {value!r} contradicts the resumed run ({key} is {saved.get(key)!r} there): a resumed "
                              f"run keeps its recipe; only {allowed} may change. Start a new run ({{checkpoint}} {resume} "
                              f"starts from its weights) instead", key, *RESUMABLE[1:], "checkpoint")


def _resume_from(cfg: TrainConfig, log: Callable[..., None]) -> tuple[TrainConfig, Optional[dict[str, Any]], Optional[Path]]:
    """The configuration to run and the checkpoint it continues: the run's own configuration wins; only the epoch
    count and checkpoint interval may change (no --epochs: the run's own planned count). The run continues in the
    folder of its checkpoint, or in ``cfg.out`` when that is set (a copy is made there)."""
    restart = _restart_checkpoint(cfg)
    if restart is not None:
        log(f"torchrun restart {os.environ['TORCHELASTIC_RESTART_COUNT']}: continuing this job's last checkpoint")
        path, state = restart  # read once
        cfg = replace(cfg, resume=str(path))
    elif cfg.resume:
        path = resolve_resume(cfg.resume)
        state = read_training_checkpoint(path)
    else:
        return cfg, None, None
    saved = state["config"]
    out = cfg.out or str(path.parent)
    cfg = TrainConfig(**{**saved, "resume": cfg.resume, "out": out, "epochs": cfg.epochs or saved["epochs"],
                         "dist_timeout": cfg.dist_timeout, "checkpoint_every": cfg.checkpoint_every or saved.get("checkpoint_every"),
                         "data_dir": cfg.data_dir or saved.get("data_dir"), "workers": cfg.workers}).validate()
    log(f"resuming {path} at epoch {state['epoch'] + 1}, step {int(state.get('step', 0))}")
    return cfg, state, path


def _start(cfg: TrainConfig, rank: int, world: int, device: torch.device, show_progress: bool, log: Callable[..., None]) -> Run:
    """Resume state and the output directory checked before any work."""
    if rank != 0:
        show_progress, log = False, (lambda *a, **k: None)
    cfg, state, path = _resume_from(cfg, log)
    run = Run(cfg, rank, world, device, log, show_progress, state, path)
    if state is not None:
        run.start_epoch, run.start_step, run.history, run.best_acc = state["epoch"], int(state.get("step", 0)), state["history"], state["best_acc"]
        if run.start_step:
            # Rank 0 carries the saved (already reduced) sums; every rank counts the same steps, so all checkpoint together.
            saved = EpochTotals(state.get("epoch_totals"))
            run.totals = saved if run.main_process else EpochTotals({"steps": saved["steps"]})
    if run.main_process:
        _check_out_writable(run.out)
    return run


def _adopt_folder(run: Run) -> None:
    """With the run folder held: a fresh run refuses another run's checkpoints; a run resumed into another folder
    (``--resume A --out B``) copies A's run there first."""
    if run.path is None:
        _check_run_directory(run.out)
    elif run.path.parent.resolve() != run.out.resolve():
        copy_run(run.path.parent, run.out, run.log)


def _load_data(run: Run) -> None:
    """The datasets, then the run directory (made only once the data has been read)."""
    cfg = run.cfg
    _seed_all(cfg.seed)
    run.train_set, run.val_set, run.info = build_datasets(cfg.data, cfg.data_dir, cfg.limit_train, cfg.limit_val, cfg.image_size,
                                                          cfg.download, cfg.seed, cfg.bad_images)
    if run.info.skipped_images:
        run.log(f"left out {run.info.skipped_images} unreadable image files (--bad-images skip)")
    if cfg.train_subset is not None:  # less data, the same steps: an epoch stays as long as the whole set
        run.epoch_length = len(run.train_set)
        run.train_set = nested_subset(run.train_set, cfg.train_subset, cfg.seed)
    if run.main_process:
        _prepare_out(run.out)
        for stale in run.out.glob(".*.tmp"):  # writes that a killed process left unfinished
            stale.unlink()


def _build_training(run: Run) -> None:
    """Model, loaders, optimiser, schedule, grad scaler, EMA, the resumed state, then DDP and torch.compile."""
    cfg, device = run.cfg, run.device
    model = build_model_for(cfg, run.info).to(device)
    if cfg.sync_bn and run.world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.fast_train:
        fast_train(model)
    if cfg.batch_size > len(run.train_set):  # one step an epoch, and the learning rate scaled for a batch never seen
        raise ConfigError(f"{{batch_size}} {cfg.batch_size} is larger than the {len(run.train_set)} training images; "
                          f"use at most {len(run.train_set)}", "batch_size")
    run.model, run.loaders = model, _loaders(cfg, run.train_set, run.val_set, run.rank, run.world, run.epoch_length)
    if cfg.accum_steps > cfg.batch_size // run.world:  # a micro-batch of less than one image per process
        raise ConfigError(f"{{accum_steps}} {cfg.accum_steps} splits each process's {cfg.batch_size // run.world} images of a batch "
                          f"into more micro-batches than images; use at most {cfg.batch_size // run.world}", "accum_steps")
    steps = cfg.epochs * run.steps_per_epoch
    if steps < SHORT_RUN_STEPS:  # e.g. 512 images in batches of 256: 2 steps an epoch
        run.log(f"note: {steps} optimiser steps in all, too few to learn much; a smaller --batch-size "
                f"(the learning rate follows it) or more --epochs gives more")
    optimizer = _optimizer(cfg, model)
    per_epoch = run.steps_per_epoch
    shape = lr_schedule(cfg.schedule, int(cfg.warmup_epochs * per_epoch), steps, [m * per_epoch for m in cfg.lr_milestones or ()], cfg.lr_gamma)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, shape)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None
    ema = None
    if cfg.ema_decay:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    run.parts = StepParts(model, optimizer, scheduler, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), device,
                          cfg.amp, cfg.channels_last, cfg.clip_grad, ema, scaler, cfg.accum_steps)
    if run.resumed is not None:
        _restore(run)
    elif cfg.pretrained or cfg.checkpoint:
        _start_from_weights(run)
    # Processes average gradients, so a global batch split over ranks updates like one process (same global batch).
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if run.world > 1 else model
    if cfg.compile:
        # dynamic=False: every stage has its own sizes, and a dynamic avg-pool window does not lower in inductor
        net = torch.compile(net, dynamic=False)  # training only: evaluation, EMA and checkpoints use the plain module
    run.parts.model = net


def _restore(run: Run) -> None:
    """The resumed checkpoint's weights (through the one loading path), optimiser, schedule, EMA and scaler."""
    state, p = run.resumed, run.parts
    load_weights(run.model, state["model"], str(run.path), classifier=None, name=run.cfg.model)
    p.optimizer.load_state_dict(state["optimizer"])
    p.scheduler.load_state_dict(state["scheduler"])
    if p.ema is not None and "model_ema" in state:
        load_weights(p.ema.module, state["model_ema"], f"{run.path} (EMA)", classifier=None, name=run.cfg.model)
    if p.scaler is not None and "scaler" in state:
        p.scaler.load_state_dict(state["scaler"])


def _start_from_weights(run: Run) -> None:
    """A new run from published or given weights: a classifier of another size starts at its initialisation, another
    input channel count is adapted; a file that declares another architecture is refused."""
    cfg = run.cfg
    path = pretrained_file(cfg.model) if cfg.pretrained else Path(cfg.checkpoint)
    state = state_dict_of(read_checkpoint(path), path, cfg.model)
    load_weights(run.model, state, str(path), name=cfg.model)  # adapts the input channels and leaves another head
    run.log(f"starting from the weights of {path}")


def _open_logs(run: Run) -> None:
    cfg, info = run.cfg, run.info
    if run.main_process:
        write_text_atomically(run.out / "config.yaml", yaml_text(cfg.to_dict()))
        run.writer = tensorboard(run.out)
    subset = f" of {run.epoch_length}" if run.epoch_length else ""
    epochs = f"{cfg.epochs} epochs of {run.epoch_length} images" if run.epoch_length else f"{cfg.epochs} epochs"
    run.log(f"training {cfg.model} on {info.name} ({len(run.train_set)}{subset} train / {len(run.val_set)} val images) for {epochs}"
            f"{f' on {run.world} processes' if run.world > 1 else ''} -> {run.out}")


def _train_epoch(run: Run, epoch: int, stop: "StopSignals") -> None:
    """Train one epoch (or its rest, when resumed mid-way), validate, record, checkpoint; stop if signalled."""
    cfg = run.cfg
    train_loader, val_loader, sampler = run.loaders
    _seed_all(cfg.seed * 1000 + epoch)  # model-side randomness (dropout, ...) per epoch: resume-exact
    skip = run.start_step if epoch == run.start_epoch else 0
    if skip and "rng" in run.resumed:
        torch.set_rng_state(run.resumed["rng"])  # mid-epoch: the generator as it was at the checkpoint
    sampler.set_epoch(epoch, skip)
    if isinstance(train_loader, DataLoader):
        train_loader.dataset.set_epoch(epoch)  # SeededSamples: per-sample augmentation seeds
    lr = _epoch_start_lr(run, epoch)
    train = train_one_epoch(run.parts, train_loader, epoch, run.show_progress, run.totals if skip else None,
                            functools.partial(run.check_step, epoch, stop))
    val = evaluate(run.model, val_loader, run.device, cfg.amp, cfg.channels_last)
    if not math.isfinite(val["loss"]):  # finite weights whose outputs overflow: no checkpoint, and never "best"
        raise FloatingPointError(f"validation loss is {val['loss']} after epoch {epoch + 1}: the model's outputs overflow; "
                                 f"nothing was saved from this epoch (the last checkpoint is kept): lower the learning rate or clip the "
                                 f"gradient norm")
    row = dict(epoch=epoch + 1, lr=lr, train_loss=train["loss"], train_acc=train["acc"], val_loss=val["loss"], val_acc=val["acc"],
               images_per_s=train["images_per_s"], seconds=train["seconds"])
    if run.parts.ema is not None:
        row["ema_val_acc"] = evaluate(run.parts.ema.module, val_loader, run.device, cfg.amp, cfg.channels_last)["acc"]
    _record_epoch(run, epoch, row)
    run.log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {train['loss']:.4f} acc {train['acc']:.2f}% | "
            f"val loss {val['loss']:.4f} acc {val['acc']:.2f}% | {train['images_per_s']:.0f} img/s"
            + (f" | {train['skipped']:.0f} steps skipped (non-finite loss)" if train["skipped"] else ""))
    signum = stop.agreed(run.device)
    if signum is not None and epoch + 1 < cfg.epochs:  # the epoch's checkpoint is the stopping point
        raise TrainingStopped(signum, f"stopped by {signal.Signals(signum).name} after epoch {epoch + 1}; "
                                      f"checkpoint written: continue with {{resume}} {run.out}", "resume")


def _epoch_start_lr(run: Run, epoch: int) -> float:
    """The learning rate of the epoch's first step, which log.csv records: the schedule's value there, not the
    optimiser's current one (a run resumed mid-epoch is past it)."""
    schedule = run.parts.scheduler  # LambdaLR: base rate x the shape at the step
    return schedule.base_lrs[0] * schedule.lr_lambdas[0](epoch * run.steps_per_epoch)


def _record_epoch(run: Run, epoch: int, row: dict[str, Any]) -> None:
    """History, best accuracy, checkpoints, the release of the best weights, log.csv and TensorBoard."""
    run.history.append(row)
    is_best = row["val_acc"] > run.best_acc
    run.best_acc = max(run.best_acc, row["val_acc"])
    ck = run.checkpoint(epoch + 1)
    if run.main_process:
        # checkpoint-last is written last: it is the commit point. A crash before its rename resumes from the
        # previous one and redoes this epoch, best checkpoint and release included.
        if is_best:
            save_checkpoint(ck, run.out / "checkpoint-best.pth")
            meta = release_metadata(run.cfg.model, run.info, config=run.cfg.to_dict(), data_info=asdict(run.info), epoch=epoch + 1,
                                    val_acc=f"{row['val_acc']:.4f}")
            write_release(run.model.state_dict(), run.out / "weights-best.safetensors", meta)
        save_checkpoint(ck, run.out / "checkpoint-last.pth")
        write_log(run.out, run.history)
    if run.writer is not None:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            run.writer.add_scalar(key, row[key], epoch + 1)


def _finish(run: Run) -> dict[str, Any]:
    """metrics.json, log.csv and the curves (again: a run killed just after its last checkpoint resumes to here)."""
    cfg, history = run.cfg, run.history
    final = dict(model=cfg.model, data=run.info.name, out=str(run.out), epochs=cfg.epochs, best_val_acc=run.best_acc,
                 final_val_acc=history[-1]["val_acc"] if history else None, train_seconds=sum(h["seconds"] for h in history))
    if run.main_process:
        if run.writer is not None:
            run.writer.close()
        if history:
            write_log(run.out, history)
            plot_curves(run.out, history, f"{cfg.model} on {run.info.name}")
        write_text_atomically(run.out / "metrics.json", json.dumps(final, indent=2))
    if run.world > 1:
        dist.barrier()
    return final


def evaluate_checkpoint(
    checkpoint: str, data: Optional[str] = None, data_dir: Optional[str] = None, limit_val: Optional[int] = None,
    batch_size: Optional[int] = None, workers: int = 0, use_ema: bool = False, engine: str = "torch",
) -> dict[str, Any]:
    """Accuracy of a training checkpoint on its dataset's validation split (or another one given by name), its model
    run by ``engine`` (``scnet.engines``: eager PyTorch, its fused form, ONNX Runtime or OpenVINO)."""
    try:
        loaded = load_model(file=checkpoint, use_ema=use_ema)
    except BareWeightsError:
        loaded = None
    if loaded is None or loaded.checkpoint is None:
        raise ConfigError(f"{checkpoint} is not a training checkpoint of this tool (no config/model entries)")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"{{batch_size}} must be a positive integer, got {batch_size!r}", "batch_size")
    state = loaded.checkpoint
    cfg = TrainConfig(**state["config"])
    cfg.data = data or cfg.data
    cfg.data_dir = data_dir if data_dir is not None else cfg.data_dir
    cfg.limit_val = limit_val if limit_val is not None else cfg.limit_val
    _, val_set, info = build_datasets(cfg.data, cfg.data_dir, 1, cfg.limit_val, cfg.image_size, cfg.download, cfg.seed, cfg.bad_images)
    if tuple(info.classes) != tuple(loaded.info.classes):  # another label set: an accuracy would mean nothing
        raise ConfigError(f"{checkpoint} was trained on {loaded.info.name} ({loaded.info.num_classes} classes: "
                          f"{', '.join(loaded.info.classes[:4])}{', ...' if loaded.info.num_classes > 4 else ''}); "
                          f"{info.name} has other classes ({info.num_classes}: {', '.join(info.classes[:4])}"
                          f"{', ...' if info.num_classes > 4 else ''}); evaluate it on data with its own classes")
    loader = DataLoader(val_set, batch_size=batch_size or cfg.batch_size, shuffle=False, num_workers=workers)
    model = loaded.model if engine == "torch" else EngineModel(loaded.model, engine)
    result = evaluate(model, loader, torch.device("cpu"))
    return dict(checkpoint=str(checkpoint), model=cfg.model, data=info.name, epoch=state.get("epoch"), engine=engine, **result)
