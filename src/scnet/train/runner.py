"""``fit``: a whole training run (data, model, optimiser, loop, logs, checkpoints, curves); ``evaluate_checkpoint``.

A run directory holds ``config.yaml`` (the resolved configuration), ``log.csv``, ``checkpoint-last.pth`` and
``checkpoint-best.pth`` (plain dicts: model, optimiser, schedule, EMA, epoch, history, config),
``metrics.json`` and ``curves.png``. ``--resume`` accepts the directory or a checkpoint file and continues
exactly where the last completed epoch left off.
"""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..data import DataInfo, TensorImages, build_datasets
from ..models import create_model
from ..models.weights import read_checkpoint
from .config import ConfigError, TrainConfig
from .engine import (EpochBatches, EpochTotals, SeededSamples, TensorBatches, check_finite_weights, evaluate, reduce_totals, save_checkpoint,
                     save_release, train_one_epoch, SCHEDULES)

__all__ = ["TrainingStopped", "fit", "evaluate_checkpoint", "build_model_for", "resolve_resume"]

SHORT_RUN_STEPS = 100  # below this many steps in all, a run is told it is too short to learn much
LOG_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "ema_val_acc", "images_per_s", "seconds")


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model_for(cfg: TrainConfig, info: DataInfo) -> nn.Module:
    return create_model(cfg.model, num_classes=info.num_classes, in_chans=info.in_chans, stem_type=cfg.stem_type, norm_layer=cfg.norm_layer)


def _init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; a plain run is rank 0 of 1."""
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
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def resolve_resume(resume: str) -> Path:
    """A run directory (its checkpoint-last.pth) or a checkpoint file."""
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoint-last.pth"
    if not path.is_file():
        raise ConfigError(f"--resume {resume}: no checkpoint found (looked for {path})")
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


def _loaders(cfg: TrainConfig, train_set, val_set, rank: int, world: int) -> tuple[Any, Any, EpochBatches]:
    """Batches of one seeded permutation per epoch: gathered from memory for tensor datasets, else by a DataLoader."""
    sampler = EpochBatches(len(train_set), cfg.batch_size, shuffle=True, drop_last=len(train_set) >= cfg.batch_size, seed=cfg.seed, rank=rank, world=world)
    val_batches = EpochBatches(len(val_set), cfg.batch_size, shuffle=False, drop_last=False, rank=rank, world=world)
    if isinstance(train_set, TensorImages) and isinstance(val_set, TensorImages):
        return TensorBatches(train_set, sampler, cfg.seed, augment=True), TensorBatches(val_set, val_batches, cfg.seed, augment=False), sampler
    train_loader = DataLoader(SeededSamples(train_set, cfg.seed), batch_sampler=sampler, num_workers=cfg.workers)
    val_loader = DataLoader(val_set, batch_sampler=val_batches, num_workers=cfg.workers)
    return train_loader, val_loader, sampler


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on norms and biases (1-D parameters), as timm and torchvision's recipes.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [dict(params=decay, weight_decay=cfg.weight_decay), dict(params=no_decay, weight_decay=0.0)]
    if cfg.opt == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def _write_log(out: Path, history: list[dict[str, Any]]) -> None:
    with open(out / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in LOG_FIELDS})


def _plot_curves(out: Path, history: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (with label smoothing)")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "s-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["val_acc"] for h in history], "s-", label="val")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; log.csv always exists
        return None
    return SummaryWriter(str(out / "tensorboard"))


class TrainingStopped(Exception):
    """A signal (SIGTERM, SIGINT) stopped the run after a checkpoint was written; ``--resume`` continues it."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class _StopSignals:
    """While active, SIGTERM and SIGINT only ask the run to stop at the next step boundary (after a checkpoint).

    A second signal of either kind ends the process the usual way. Handlers are installed only in the main
    thread of the main interpreter (the only place Python allows) and the previous ones come back on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = signum
        for sig, previous in self._previous.items():  # a second signal is not caught
            signal.signal(sig, previous)

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def agreed(self, device: torch.device) -> Optional[int]:
        """The signal any process received (all processes must stop at the same step), or None."""
        if not (dist.is_available() and dist.is_initialized()):
            return self.requested
        flag = torch.tensor([float(self.requested or 0)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None


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
        raise ConfigError(f"{out} holds a checkpoint that cannot be read ({e}); choose another --out") from e
    if done >= planned and not steps:
        raise ConfigError(f"{out} already holds a finished run ({done} epochs); choose another --out, or continue it "
                          f"for more epochs with --resume {out} --epochs N")
    where = f"epoch {done + 1}, step {steps}" if steps else f"after epoch {done}"
    raise ConfigError(f"{out} holds an unfinished run (stopped {where} of {planned} epochs); continue it with "
                      f"--resume {out}, or choose another --out")


def fit(cfg: TrainConfig, show_progress: bool = True, log: Any = print, stop_after_epoch: Optional[int] = None) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; returns the final metrics (also written to metrics.json).

    ``stop_after_epoch`` ends the run early while keeping the schedule of ``cfg.epochs`` (resume continues it).
    Checkpoints are written at every epoch end and, with ``cfg.checkpoint_every``, every N steps; SIGTERM or
    SIGINT writes one at the current step and raises ``TrainingStopped``. Resuming from any of them gives the
    weights an uninterrupted run would have had.
    """
    start_epoch, start_step, totals, history, best_acc, state = 0, 0, None, [], -1.0, None
    if cfg.resume:
        path = resolve_resume(cfg.resume)
        state = read_checkpoint(path)
        saved = TrainConfig(**{**state["config"], "resume": cfg.resume, "epochs": cfg.epochs or state["config"]["epochs"],
                               "checkpoint_every": cfg.checkpoint_every or state["config"].get("checkpoint_every")})
        cfg = saved.validate()  # the run's own configuration wins; only the epoch count and checkpoint interval may change
        # (no --epochs: the run's own planned count)
        start_epoch, start_step, history, best_acc = state["epoch"], int(state.get("step", 0)), state["history"], state["best_acc"]
        if start_step:
            totals = EpochTotals(state.get("epoch_totals"))
        log(f"resuming {path} at epoch {start_epoch + 1}, step {start_step}")
    rank, world, device = _init_distributed()
    main_process = rank == 0
    if not main_process:
        show_progress, log = False, (lambda *a, **k: None)
        # Rank 0 carries the saved (already reduced) sums; every rank counts the same steps, so all checkpoint together.
        totals = EpochTotals({"steps": totals["steps"]}) if totals is not None else None
    out = Path(cfg.out)
    if main_process:
        _check_out_writable(out)
        if state is None:
            _check_run_directory(out)
    _seed_all(cfg.seed)
    train_set, val_set, info = build_datasets(cfg.data, cfg.data_dir, cfg.limit_train, cfg.limit_val, cfg.image_size, cfg.download,
                                              cfg.seed, cfg.bad_images)
    if info.skipped_images:
        log(f"left out {info.skipped_images} unreadable image files (--bad-images skip)")
    if main_process:  # the run directory is made only once the data has been read
        _prepare_out(out)
        for stale in out.glob(".*.tmp"):  # writes that a killed process left unfinished
            stale.unlink()
    model = build_model_for(cfg, info).to(device)
    if cfg.sync_bn and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader, val_loader, sampler = _loaders(cfg, train_set, val_set, rank, world)
    optimizer = _optimizer(cfg, model)
    steps_per_epoch = len(sampler)
    if cfg.epochs * steps_per_epoch < SHORT_RUN_STEPS:  # e.g. 512 images in batches of 256: 2 steps an epoch
        log(f"note: {cfg.epochs * steps_per_epoch} optimiser steps in all, too few to learn much; a smaller --batch-size "
            f"(the learning rate follows it) or more --epochs gives more")
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    shape = SCHEDULES[cfg.schedule]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: shape(step, warmup, cfg.epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None
    ema = None
    if cfg.ema_decay:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and "model_ema" in state:
            ema.module.load_state_dict(state["model_ema"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
    # Processes average gradients, so a global batch split over ranks updates like one process (same global batch).
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    if cfg.compile:
        # dynamic=False: every stage has its own sizes, and a dynamic avg-pool window does not lower in inductor
        net = torch.compile(net, dynamic=False)  # training only: evaluation, EMA and checkpoints use the plain module
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    writer = None
    if main_process:
        (out / "config.yaml").write_text(_yaml(cfg.to_dict()))
        writer = _tensorboard(out)
    log(f"training {cfg.model} on {info.name} ({len(train_set)} train / {len(val_set)} val images) for {cfg.epochs} epochs"
        f"{f' on {world} processes' if world > 1 else ''} -> {out}")

    def checkpoint(epoch: int, step: int = 0, epoch_totals: Optional[EpochTotals] = None) -> dict[str, Any]:
        """The whole state: ``epoch`` epochs done, then ``step`` steps of the next (with its running sums)."""
        ck = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), epoch=epoch,
                  step=step, history=history, best_acc=best_acc, config=cfg.to_dict(), arch=cfg.model, data_info=asdict(info))
        if step:
            ck.update(epoch_totals=dict(epoch_totals), rng=torch.get_rng_state())
        if ema is not None:
            ck["model_ema"] = ema.module.state_dict()
        if scaler is not None:
            ck["scaler"] = scaler.state_dict()
        check_finite_weights(ck["model"], f"at epoch {epoch + (1 if step else 0)}, step {step}")
        return ck

    with _StopSignals() as stop:
        for epoch in range(start_epoch, min(cfg.epochs, stop_after_epoch or cfg.epochs)):
            _seed_all(cfg.seed * 1000 + epoch)  # model-side randomness (dropout, ...) per epoch: resume-exact
            skip = start_step if epoch == start_epoch else 0
            if skip and "rng" in state:
                torch.set_rng_state(state["rng"])  # mid-epoch: the generator as it was at the checkpoint
            sampler.set_epoch(epoch, skip)
            if isinstance(train_loader, DataLoader):
                train_loader.dataset.set_epoch(epoch)  # SeededSamples: per-sample augmentation seeds
            lr = optimizer.param_groups[0]["lr"]

            def after_step(t: EpochTotals, epoch: int = epoch) -> None:
                signum = stop.agreed(device)
                periodic = bool(cfg.checkpoint_every) and int(t["steps"]) % cfg.checkpoint_every == 0 and t["steps"] < steps_per_epoch
                if signum is None and not periodic:
                    return
                ck = checkpoint(epoch, int(t["steps"]), reduce_totals(t, device))
                if main_process:
                    save_checkpoint(ck, out / "checkpoint-last.pth")
                if signum is not None:
                    name = signal.Signals(signum).name
                    raise TrainingStopped(signum, f"stopped by {name} at epoch {epoch + 1}, step {int(t['steps'])} of {steps_per_epoch}; "
                                                  f"checkpoint written: continue with --resume {out}")

            train = train_one_epoch(net, train_loader, optimizer, scheduler, criterion, device, epoch, cfg.amp, cfg.channels_last,
                                    cfg.clip_grad, ema, scaler, show_progress, totals if skip else None, after_step)
            val = evaluate(model, val_loader, device, cfg.amp, cfg.channels_last)
            row = dict(epoch=epoch + 1, lr=lr, train_loss=train["loss"], train_acc=train["acc"], val_loss=val["loss"], val_acc=val["acc"],
                       images_per_s=train["images_per_s"], seconds=train["seconds"])
            if ema is not None:
                row["ema_val_acc"] = evaluate(ema.module, val_loader, device, cfg.amp, cfg.channels_last)["acc"]
            history.append(row)
            is_best = val["acc"] > best_acc
            best_acc = max(best_acc, val["acc"])
            ck = checkpoint(epoch + 1)
            if main_process:
                # checkpoint-last is written last: it is the commit point. A crash before its rename resumes from the
                # previous one and redoes this epoch, best checkpoint and release included.
                if is_best:
                    save_checkpoint(ck, out / "checkpoint-best.pth")
                    save_release(model.state_dict(), out / "weights-best.safetensors", _release_metadata(cfg, info, epoch + 1, val["acc"]))
                save_checkpoint(ck, out / "checkpoint-last.pth")
                _write_log(out, history)
            if writer is not None:
                for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
                    writer.add_scalar(key, row[key], epoch + 1)
            log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {train['loss']:.4f} acc {train['acc']:.2f}% | "
                f"val loss {val['loss']:.4f} acc {val['acc']:.2f}% | {train['images_per_s']:.0f} img/s"
                + (f" | {train['skipped']:.0f} steps skipped (non-finite loss)" if train["skipped"] else ""))
            signum = stop.agreed(device)
            if signum is not None and epoch + 1 < cfg.epochs:  # the epoch's checkpoint is the stopping point
                raise TrainingStopped(signum, f"stopped by {signal.Signals(signum).name} after epoch {epoch + 1}; "
                                              f"checkpoint written: continue with --resume {out}")
    final = dict(model=cfg.model, data=info.name, out=str(out), epochs=cfg.epochs, best_val_acc=best_acc,
                 final_val_acc=history[-1]["val_acc"] if history else None, train_seconds=sum(h["seconds"] for h in history))
    if main_process:
        if writer is not None:
            writer.close()
        if history:
            _write_log(out, history)  # again: a run killed just after its last checkpoint resumes straight to here
            _plot_curves(out, history, f"{cfg.model} on {info.name}")
        (out / "metrics.json").write_text(json.dumps(final, indent=2))
    if world > 1:
        dist.barrier()
    return final


def _release_metadata(cfg: TrainConfig, info: DataInfo, epoch: int, val_acc: float) -> dict[str, str]:
    """What a user of the released weights needs to rebuild the model and prepare its inputs (strings only)."""
    from .. import __version__

    return dict(format="scnet", arch=cfg.model, num_classes=str(info.num_classes), in_chans=str(info.in_chans),
                input_size=str(info.image_size), mean=json.dumps(info.mean), std=json.dumps(info.std),
                config=json.dumps(cfg.to_dict()), data_info=json.dumps(asdict(info)), epoch=str(epoch),
                val_acc=f"{val_acc:.4f}", scnet_version=__version__)


def _yaml(values: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(values, sort_keys=False)


def load_trained_model(state: dict[str, Any], cfg: TrainConfig, info: DataInfo, use_ema: bool = False, source: str = "checkpoint") -> nn.Module:
    """The model a training checkpoint (or released safetensors file) describes, with its weights loaded."""
    key = "model_ema" if use_ema else "model"
    if key not in state:
        raise ConfigError(f"{source} has no {'EMA ' if use_ema else ''}weights (no '{key}' entry)")
    model = build_model_for(cfg, info)
    try:
        model.load_state_dict(state[key])
    except RuntimeError as e:
        raise ConfigError(f"{source} does not fit {cfg.model} on {info.name}: {str(e).splitlines()[0]}") from e
    return model


def evaluate_checkpoint(
    checkpoint: str, data: Optional[str] = None, data_dir: Optional[str] = None, limit_val: Optional[int] = None,
    batch_size: Optional[int] = None, workers: int = 0, use_ema: bool = False,
) -> dict[str, Any]:
    """Accuracy of a training checkpoint on its dataset's validation split (or another one given by name)."""
    state = read_checkpoint(checkpoint)
    if "config" not in state or "model" not in state:
        raise ConfigError(f"{checkpoint} is not a training checkpoint of this tool (no config/model entries)")
    cfg = TrainConfig(**state["config"])
    cfg.data = data or cfg.data
    cfg.data_dir = data_dir if data_dir is not None else cfg.data_dir
    cfg.limit_val = limit_val if limit_val is not None else cfg.limit_val
    _, val_set, info = build_datasets(cfg.data, cfg.data_dir, 1, cfg.limit_val, cfg.image_size, cfg.download, cfg.seed, cfg.bad_images)
    model = load_trained_model(state, cfg, info, use_ema, checkpoint)
    loader = DataLoader(val_set, batch_size=batch_size or cfg.batch_size, shuffle=False, num_workers=workers)
    result = evaluate(model, loader, torch.device("cpu"))
    return dict(checkpoint=str(checkpoint), model=cfg.model, data=info.name, epoch=state.get("epoch"), **result)
