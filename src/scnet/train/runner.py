"""``fit``: a whole training run (data, model, optimiser, loop, logs, checkpoints, curves), as phases that return
what they make.

A run directory holds ``config.yaml`` (the resolved configuration), ``log.csv``, ``checkpoint-last.pth`` and
``checkpoint-best.pth`` (plain dicts: model, optimiser, schedule, EMA, epoch, history, config),
``metrics.json`` and ``curves.png``. ``--resume`` accepts the directory or a checkpoint file and continues
exactly where the last completed epoch left off. Around the run: the processes (``distributed``), which
checkpoint it continues (``resume``), its folder (``folder``) and reading a checkpoint back (``checkpoint_eval``).
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import signal
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..data import TensorImages, build_datasets, nested_subset
from ..data.loading import data_workers, loader_options
from ..data.shards import ShardedImages, ShardLoader
from ..fast import fast_train
from ..files import write_release, write_text_atomically
from ..load import model_from_config
from ..models.resolve import config_args, resolve
from ..models.spec import ModelSpec
from ..models.weights import load_weights
from .config import ConfigError, TrainConfig
from .distributed import init_distributed, job_id
from .folder import adopt_folder, check_out_writable, own_folder, prepare_out
from .records import plot_curves, tensorboard, write_log, yaml_text
from .peers import PeerFailed, shared_failures
from .resume import Resumed, resume_from
from .signals import StopSignals, TrainingStopped
from .engine import (EpochBatches, EpochTotals, SeededSamples, StepParts, TensorBatches, check_finite_weights, evaluate,
                     reduce_totals, save_checkpoint, train_one_epoch, lr_schedule)

__all__ = ["TrainingStopped", "PeerFailed", "fit", "build_model_for"]

SHORT_RUN_STEPS = 100  # below this many steps in all, a run is told it is too short to learn much


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _silent(*args: Any, **kwargs: Any) -> None:
    """The log of every process but the first: one line per event, not one per process."""


def build_model_for(cfg: TrainConfig, info: ModelSpec) -> nn.Module:
    """The run's model with random weights (``scnet.load.model_from_config``); tests wrap it to train in float64."""
    return model_from_config(cfg.to_dict(), info)


@dataclass(frozen=True)
class RunData:
    """The datasets a run trains and validates on; with a training subset, ``epoch_length`` is the whole set's length
    (an epoch's items: less data, the same steps)."""

    train_set: Any
    val_set: Any
    info: ModelSpec
    epoch_length: Optional[int] = None


@dataclass
class Run:
    """A run once every phase before the loop has returned: what it trains and, changing from epoch to epoch, where
    it stands (``history``, ``best_acc``)."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    log: Callable[..., None]
    show_progress: bool
    resumed: Resumed
    data: RunData
    model: nn.Module  # the plain module: evaluation, EMA and checkpoints use it
    parts: StepParts  # what each step runs (parts.model may be DDP-wrapped or compiled)
    loaders: tuple[Any, Any, EpochBatches]  # train, val, the train batches
    writer: Any
    history: list[dict[str, Any]]
    best_acc: float

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def spec(self) -> ModelSpec:
        """What the trained model is and expects (the data's description with the architecture): checkpoints and
        releases carry it."""
        return replace(self.data.info, arch=self.cfg.model, model_args=config_args(self.cfg.to_dict()))

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
                  data_info=self.spec.to_dict(), job=job_id())
        if step:
            # The generators a step draws from: torch's (drop path, erasing's noise) and Python's (erasing's boxes).
            ck.update(epoch_totals=dict(epoch_totals), rng=torch.get_rng_state(), py_rng=random.getstate())
        if p.ema is not None:
            ck["model_ema"] = p.ema.module.state_dict()
        if p.scaler is not None:
            ck["scaler"] = p.scaler.state_dict()
        check_finite_weights(ck["model"], f"at epoch {epoch + (1 if step else 0)}, step {step}")
        return ck

    def resumed_totals(self, epoch: int) -> Optional[EpochTotals]:
        """The running sums of an epoch resumed mid-way (None for any other epoch). Rank 0 carries the saved (already
        reduced) sums; every rank counts the same steps, so all checkpoint together."""
        state = self.resumed.state
        if epoch != self.resumed.epoch or not self.resumed.step:
            return None
        saved = EpochTotals(state.get("epoch_totals"))
        return saved if self.main_process else EpochTotals({"steps": saved["steps"]})

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
    rank, world, device = init_distributed(cfg.dist_timeout)
    with shared_failures(rank, world, cfg.dist_timeout):  # one process's failure ends the run on every process
        if rank != 0:
            show_progress, log = False, _silent
        resumed = resume_from(cfg, log)  # the checkpoint and the output folder checked before any work
        cfg, out, main = resumed.cfg, Path(resumed.cfg.out), rank == 0
        if main:
            check_out_writable(out)
        with own_folder(out, log) if main else contextlib.nullcontext():  # one run per folder
            if main:
                adopt_folder(out, resumed.path, log)
            data = _load_data(cfg, main, log)
            model, parts, loaders = _build_training(cfg, data, resumed, rank, world, device, log)
            writer = _open_logs(cfg, data, world, main, log)
            run = Run(cfg, rank, world, device, log, show_progress, resumed, data, model, parts, loaders, writer,
                      list(resumed.history), resumed.best_acc)
            with StopSignals() as stop:
                for epoch in range(resumed.epoch, min(cfg.epochs, stop_after_epoch or cfg.epochs)):
                    _train_epoch(run, epoch, stop)
            return _finish(run)


def _load_data(cfg: TrainConfig, main: bool, log: Callable[..., None]) -> RunData:
    """The datasets, then the run directory (made only once the data has been read)."""
    _seed_all(cfg.seed)
    train_set, val_set, info = build_datasets(cfg.data, cfg.data_dir, cfg.limit_train, cfg.limit_val, cfg.image_size,
                                              cfg.download, cfg.seed, cfg.bad_images, cfg.auto_augment, cfg.val_data)
    if info.skipped_images:
        log(f"left out {info.skipped_images} unreadable image files (--bad-images skip)")
    data = RunData(train_set, val_set, info)
    if cfg.train_subset is not None and isinstance(train_set, ShardedImages):
        raise ConfigError("{train_subset} draws images at random, which a stream of shards cannot do; use "
                          "{limit_train} (the first N images) or write a smaller set of shards", "train_subset")
    if cfg.train_subset is not None:  # less data, the same steps: an epoch stays as long as the whole set
        data = RunData(nested_subset(train_set, cfg.train_subset, cfg.seed), val_set, info, len(train_set))
    if main:
        prepare_out(Path(cfg.out))
    return data


def _loaders(cfg: TrainConfig, data: RunData, rank: int, world: int) -> tuple[Any, Any, Any]:
    """(train, val, the epoch's batches: ``len`` and ``set_epoch(epoch, start)``): seeded permutations,
    ``data.epoch_length`` items an epoch (default: the training set's length), gathered from memory for tensor
    datasets, else by a DataLoader; shards are read as a stream (``ShardLoader``)."""
    train_set, val_set = data.train_set, data.val_set
    if isinstance(train_set, ShardedImages):
        workers, share = data_workers(cfg.workers), cfg.batch_size // world
        train = ShardLoader(train_set, share, workers, rank, world, train=True)
        return train, ShardLoader(val_set, share, workers, rank, world, train=False), train
    length = data.epoch_length or len(train_set)
    sampler = EpochBatches(len(train_set), cfg.batch_size, shuffle=True, drop_last=length >= cfg.batch_size, seed=cfg.seed, rank=rank,
                           world=world, epoch_length=data.epoch_length)
    val_batches = EpochBatches(len(val_set), cfg.batch_size, shuffle=False, drop_last=False, rank=rank, world=world)
    if isinstance(train_set, TensorImages) and isinstance(val_set, TensorImages):
        return TensorBatches(train_set, sampler, cfg.seed, augment=True), TensorBatches(val_set, val_batches, cfg.seed, augment=False), sampler
    workers = data_workers(cfg.workers)
    train_loader = DataLoader(SeededSamples(train_set, cfg.seed), batch_sampler=sampler, **loader_options(workers))
    val_loader = DataLoader(val_set, batch_sampler=val_batches, **loader_options(workers))
    return train_loader, val_loader, sampler


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on norms and biases (1-D parameters), as timm and torchvision's recipes, unless ``decay_all``
    # (the PyTorch ImageNet example the paper used decays every parameter).
    decay = [p for p in model.parameters() if p.ndim > 1 or cfg.decay_all]
    no_decay = [p for p in model.parameters() if p.ndim <= 1 and not cfg.decay_all]
    groups = [dict(params=decay, weight_decay=cfg.weight_decay), dict(params=no_decay, weight_decay=0.0)]
    if cfg.opt == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.opt == "lamb":
        from timm.optim import Lamb

        return Lamb(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


def _check_batches(cfg: TrainConfig, images: int, world: int) -> None:
    """Refuse batches that cannot be what they say: larger than the training set, or split below one image."""
    if cfg.batch_size > images:  # one step an epoch, and the learning rate scaled for a batch never seen
        raise ConfigError(f"{{batch_size}} {cfg.batch_size} is larger than the {images} training images; "
                          f"use at most {images}", "batch_size")
    if cfg.mixing and (cfg.batch_size // world) % 2:  # timm mixes a batch with itself reversed
        raise ConfigError(f"{{batch_size}} {cfg.batch_size} leaves {cfg.batch_size // world} images per process, an odd "
                          f"number; mixup and cutmix pair each image with another: use an even share", "batch_size")
    if cfg.accum_steps > cfg.batch_size // world:  # a micro-batch of less than one image per process
        raise ConfigError(f"{{accum_steps}} {cfg.accum_steps} splits each process's {cfg.batch_size // world} images of a batch "
                          f"into more micro-batches than images; use at most {cfg.batch_size // world}", "accum_steps")


def _eraser(cfg: TrainConfig, device: torch.device) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """timm's random erasing of a normalised batch (each image with probability ``reprob``), or None."""
    if not cfg.reprob:
        return None
    from timm.data.random_erasing import RandomErasing

    return RandomErasing(cfg.reprob, mode="pixel", device=str(device))


def _mixer(cfg: TrainConfig, num_classes: int) -> Optional[Callable[[torch.Tensor, torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]]:
    """timm's mixup/cutmix of each process's batch (one lambda per batch, ``mixup_switch_prob`` choosing cutmix),
    the label smoothing in its soft targets; or None.

    timm draws from NumPy's global generator: here it is seeded per (seed, epoch, step) for the call, so a resumed run
    mixes as an uninterrupted one, and every process draws the same lambda (each mixes its own share of the batch).
    """
    if not cfg.mixing:
        return None
    from timm.data import Mixup

    from ..data.policies import augment_seed, seeded

    mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, switch_prob=cfg.mixup_switch_prob,
                  label_smoothing=cfg.label_smoothing, num_classes=num_classes)

    def mix(images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        with seeded(augment_seed(cfg.seed, epoch, step)):
            return mixup(images, labels)

    return mix


def _criterion(cfg: TrainConfig) -> nn.Module:
    """The training loss: softmax cross-entropy, or timm's binary cross-entropy on smoothed one-hot targets (each
    class a sigmoid, as "ResNet strikes back" trains); both take class indices and ``label_smoothing``, and the soft
    targets of mixup/cutmix, which carry the smoothing themselves (``_mixer``), so it is not applied twice."""
    smoothing = 0.0 if cfg.mixing else cfg.label_smoothing
    if cfg.bce_loss:
        from timm.loss import BinaryCrossEntropy

        return BinaryCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss(label_smoothing=smoothing)


def _step_parts(cfg: TrainConfig, model: nn.Module, per_epoch: int, device: torch.device, num_classes: int) -> StepParts:
    """Optimiser, schedule, loss, grad scaler and EMA: what every step runs."""
    optimizer = _optimizer(cfg, model)
    steps = cfg.epochs * per_epoch
    shape = lr_schedule(cfg.schedule, int(cfg.warmup_epochs * per_epoch), steps, [m * per_epoch for m in cfg.lr_milestones or ()], cfg.lr_gamma)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, shape)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None
    ema = None
    if cfg.ema_decay:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    return StepParts(model, optimizer, scheduler, _criterion(cfg), device,
                     cfg.amp, cfg.channels_last, cfg.clip_grad, ema, scaler, cfg.accum_steps, _eraser(cfg, device),
                     _mixer(cfg, num_classes))


def _build_training(cfg: TrainConfig, data: RunData, resumed: Resumed, rank: int, world: int, device: torch.device,
                    log: Callable[..., None]) -> tuple[nn.Module, StepParts, tuple[Any, Any, EpochBatches]]:
    """Model, loaders and step parts, the resumed state or starting weights, then DDP and torch.compile."""
    model = build_model_for(cfg, data.info).to(device)
    if cfg.sync_bn and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.fast_train:
        fast_train(model)
    _check_batches(cfg, len(data.train_set), world)
    loaders = _loaders(cfg, data, rank, world)
    if isinstance(loaders[2], ShardLoader) and loaders[2].images_per_epoch < len(data.train_set):
        log(f"note: {loaders[2].images_per_epoch} of the {len(data.train_set)} training images an epoch: every process "
            f"takes as many full batches as the one with the fewest (the shards do not split evenly over {world} "
            f"process(es) x {max(data_workers(cfg.workers), 1)} loader stream(s) in batches of {cfg.batch_size // world})")
    if cfg.epochs * len(loaders[2]) < SHORT_RUN_STEPS:  # e.g. 512 images in batches of 256: 2 steps an epoch
        log(f"note: {cfg.epochs * len(loaders[2])} optimiser steps in all, too few to learn much; a smaller --batch-size "
            f"(the learning rate follows it) or more --epochs gives more")
    parts = _step_parts(cfg, model, len(loaders[2]), device, data.info.num_classes)
    if resumed.state is not None:
        _restore(cfg, model, parts, resumed)
    elif cfg.pretrained or cfg.checkpoint:
        _start_from_weights(cfg, model, log)
    # Processes average gradients, so a global batch split over ranks updates like one process (same global batch).
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    if cfg.compile:
        # dynamic=False: every stage has its own sizes, and a dynamic avg-pool window does not lower in inductor
        net = torch.compile(net, dynamic=False)  # training only: evaluation, EMA and checkpoints use the plain module
    parts.model = net
    return model, parts, loaders


def _restore(cfg: TrainConfig, model: nn.Module, parts: StepParts, resumed: Resumed) -> None:
    """The resumed checkpoint's weights (through the one loading path), optimiser, schedule, EMA and scaler."""
    state = resumed.state
    load_weights(model, state["model"], str(resumed.path), classifier=None, name=cfg.model)
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    if parts.ema is not None and "model_ema" in state:
        load_weights(parts.ema.module, state["model_ema"], f"{resumed.path} (EMA)", classifier=None, name=cfg.model)
    if parts.scaler is not None and "scaler" in state:
        parts.scaler.load_state_dict(state["scaler"])


def _start_from_weights(cfg: TrainConfig, model: nn.Module, log: Callable[..., None]) -> None:
    """A new run from published or given weights: a classifier of another size starts at its initialisation, another
    input channel count is adapted; a file that declares another architecture is refused."""
    resolved = resolve(cfg.model, None if cfg.pretrained else cfg.checkpoint, pretrained=cfg.pretrained, described=False)
    for tensors, source in resolved.weights:
        load_weights(model, tensors, source, name=cfg.model)  # adapts the input channels and leaves another head
        log(f"starting from the weights of {source}")


def _open_logs(cfg: TrainConfig, data: RunData, world: int, main: bool, log: Callable[..., None]) -> Any:
    """config.yaml and the TensorBoard writer (returned; None off the main process), and the run's opening line."""
    writer = None
    if main:
        write_text_atomically(Path(cfg.out) / "config.yaml", yaml_text(cfg.to_dict()))
        writer = tensorboard(Path(cfg.out))
    subset = f" of {data.epoch_length}" if data.epoch_length else ""
    epochs = f"{cfg.epochs} epochs of {data.epoch_length} images" if data.epoch_length else f"{cfg.epochs} epochs"
    log(f"training {cfg.model} on {data.info.name} ({len(data.train_set)}{subset} train / {len(data.val_set)} val images) for {epochs}"
        f"{f' on {world} processes' if world > 1 else ''} -> {cfg.out}")
    return writer


def _train_epoch(run: Run, epoch: int, stop: "StopSignals") -> None:
    """Train one epoch (or its rest, when resumed mid-way), validate, record, checkpoint; stop if signalled."""
    cfg = run.cfg
    train_loader, val_loader, sampler = run.loaders
    _seed_all(cfg.seed * 1000 + epoch)  # model-side randomness (dropout, ...) per epoch: resume-exact
    skip = run.resumed.step if epoch == run.resumed.epoch else 0
    if skip and "rng" in run.resumed.state:
        torch.set_rng_state(run.resumed.state["rng"])  # mid-epoch: the generators as they were at the checkpoint
        if "py_rng" in run.resumed.state:
            random.setstate(run.resumed.state["py_rng"])
    sampler.set_epoch(epoch, skip)
    if isinstance(train_loader, DataLoader):
        train_loader.dataset.set_epoch(epoch)  # SeededSamples: per-sample augmentation seeds
    lr = _epoch_start_lr(run, epoch)
    train = train_one_epoch(run.parts, train_loader, epoch, run.show_progress, run.resumed_totals(epoch),
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
            meta = run.spec.metadata(config=run.cfg.to_dict(), epoch=epoch + 1, val_acc=f"{row['val_acc']:.4f}")
            write_release(run.model.state_dict(), run.out / "weights-best.safetensors", meta)
        save_checkpoint(ck, run.out / "checkpoint-last.pth")
        write_log(run.out, run.history)
    if run.writer is not None:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            run.writer.add_scalar(key, row[key], epoch + 1)


def _finish(run: Run) -> dict[str, Any]:
    """metrics.json, log.csv and the curves (again: a run killed just after its last checkpoint resumes to here)."""
    cfg, history = run.cfg, run.history
    final = dict(model=cfg.model, data=run.data.info.name, out=str(run.out), epochs=cfg.epochs, best_val_acc=run.best_acc,
                 final_val_acc=history[-1]["val_acc"] if history else None, train_seconds=sum(h["seconds"] for h in history))
    if run.main_process:
        if run.writer is not None:
            run.writer.close()
        if history:
            write_log(run.out, history)
            plot_curves(run.out, history, f"{cfg.model} on {run.data.info.name}")
        write_text_atomically(run.out / "metrics.json", json.dumps(final, indent=2))
    if run.world > 1:
        dist.barrier()
    return final


