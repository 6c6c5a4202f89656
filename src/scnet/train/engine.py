"""Training and evaluation steps, the schedule, reproducible sampling and atomic checkpoints.

Reproducibility: batches are cut from one permutation per (seed, epoch), and the augmentation is seeded by
(seed, epoch, batch) for in-memory datasets (``TensorBatches``) or by (seed, epoch, index) per sample for the
others (``SeededSamples``). What a run sees therefore depends neither on where it was resumed nor on the number
of data workers or processes.
"""
from __future__ import annotations

import functools
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from ..data.policies import augment_seed, seeded
from ..files import write_atomically

__all__ = [
    "SeededSamples", "EpochBatches", "TensorBatches", "EpochTotals", "warmup_cosine", "warmup_linear", "warmup_step", "SCHEDULES", "lr_schedule", "StepParts", "train_one_epoch", "evaluate", "save_checkpoint",
    "check_finite_weights", "reduce_totals", "autocast",
]


class EpochBatches(Sampler[list[int]]):
    """Batches of seeded permutations; with ``world > 1`` each rank takes its slice of every batch.

    The union over ranks of batch k is exactly batch k of a single process with the same global batch size.
    ``set_epoch(e, start)`` skips the first ``start`` batches: a run resumed mid-epoch sees the rest of the very
    same permutation.

    ``epoch_length`` (default ``size``) lets an epoch hold another number of items than the set: the items are
    read from one stream of passes, each pass a permutation of the set seeded by (seed, pass), and epoch e is the
    stream's items ``e * epoch_length`` to ``(e + 1) * epoch_length``. A training subset thus takes the steps and
    schedule of the whole set, every image seen equally often up to one pass. With the default, epoch e is pass e.
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int = 0, rank: int = 0, world: int = 1,
                 epoch_length: Optional[int] = None) -> None:
        if batch_size % world:
            raise ValueError(f"the global batch size {batch_size} must divide by the number of processes {world}")
        if epoch_length is not None and (epoch_length < 1 or size < 1):
            raise ValueError(f"an epoch of {epoch_length} items needs a set to draw them from, got {size} items")
        self.size, self.batch_size, self.shuffle, self.drop_last = size, batch_size, shuffle, drop_last
        self.length = size if epoch_length is None else epoch_length
        self.seed, self.rank, self.world, self.epoch, self.start = seed, rank, world, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.length // self.batch_size if self.drop_last else math.ceil(self.length / self.batch_size)

    def _pass(self, number: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 7919 + number)).tolist()

    def order(self) -> list[int]:
        """This epoch's items, in order: its stretch of the stream of passes."""
        if self.size == 0:
            return []
        begin = self.epoch * self.length
        first, last = begin // self.size, (begin + self.length - 1) // self.size
        stream = [i for number in range(first, last + 1) for i in self._pass(number)]
        offset = begin - first * self.size
        return stream[offset:offset + self.length]

    def slices(self) -> Iterator[tuple[int, int, int, list[int]]]:
        """(batch number k, this rank's offset in global batch k, its global size, this rank's indices) per batch."""
        order = self.order()
        for k in range(self.start, len(self)):
            batch = order[k * self.batch_size:(k + 1) * self.batch_size]
            share = math.ceil(len(batch) / self.world)
            mine = batch[self.rank * share:(self.rank + 1) * share]
            if mine:  # a short last batch may leave nothing for the last ranks
                yield k, self.rank * share, len(batch), mine

    def __iter__(self) -> Iterator[list[int]]:
        for _, _, _, mine in self.slices():
            yield mine


class SeededSamples(Dataset):
    """Wraps a dataset so sample ``i`` of epoch ``e`` is augmented with RNG seed (seed, e, i)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with seeded(augment_seed(self.seed, self.epoch, index)):  # torch's, Python's (timm's policies) and NumPy's
            return self.dataset[index]


class TensorBatches:
    """The loader of in-memory datasets (``TensorImages``): whole batches gathered and augmented in one call.

    The augmentation of global batch k of epoch e is drawn from a generator seeded by (seed, e, k) for the
    whole global batch, and this rank applies its slice: a resumed run, or one split over processes, sees
    exactly the images a single uninterrupted process sees. No worker processes are needed.
    """

    def __init__(self, dataset, batches: EpochBatches, seed: int, augment: bool) -> None:
        self.dataset, self.batches, self.seed, self.augment = dataset, batches, seed, augment

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.batches.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        aug = self.dataset.augment if self.augment else None
        for k, offset, size, mine in self.batches.slices():
            params = None
            if aug is not None:
                gen = torch.Generator().manual_seed(augment_seed(self.seed, self.batches.epoch, k))
                params = {name: v[offset:offset + len(mine)] for name, v in aug.draw(size, gen).items()}
            yield self.dataset.batch(torch.tensor(mine), params)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up from ~0 to 1, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_linear(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then linear decay to 0 at ``total_steps`` (one-cycle shape).

    Why: in a run of a few epochs most of the accuracy comes in the last stretch at a small learning rate, and a
    linear decay gets there sooner than a cosine, which stays near the peak for longer.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def warmup_step(step: int, warmup_steps: int, milestones: Sequence[int], gamma: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up (if any), then ``gamma`` times smaller at each milestone step.

    The paper's recipe (the PyTorch ImageNet example): no warm-up, divided by 10 at epochs 30, 60 and 90.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return gamma ** sum(step >= m for m in milestones)


SCHEDULES = ("linear", "cosine", "step")


def lr_schedule(name: str, warmup_steps: int, total_steps: int, milestones: Sequence[int] = (), gamma: float = 0.1) -> Callable[[int], float]:
    """The multiplier of step ``step`` for ``LambdaLR``: "linear" or "cosine" decay to 0 at ``total_steps``, or
    "step" decay at the ``milestones`` (in steps)."""
    if name == "step":
        return functools.partial(warmup_step, warmup_steps=warmup_steps, milestones=tuple(milestones), gamma=gamma)
    shape = {"cosine": warmup_cosine, "linear": warmup_linear}[name]
    return functools.partial(shape, warmup_steps=warmup_steps, total_steps=total_steps)


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16)


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class EpochTotals(dict):
    """Running sums of one epoch (loss, correct, seen, seconds, steps, skipped): saved in mid-epoch checkpoints so
    a resumed epoch reports what an uninterrupted one would have."""

    KEYS = ("loss_sum", "correct", "seen", "seconds", "steps", "skipped")

    def __init__(self, values: Optional[dict[str, float]] = None) -> None:
        super().__init__({k: float((values or {}).get(k, 0.0)) for k in self.KEYS})


@dataclass
class StepParts:
    """What every optimiser step uses, made once per run: the model to run (wrapped in DDP or compiled, or not),
    the optimiser and schedule, the loss and where and how to compute."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    criterion: nn.Module
    device: torch.device
    amp: bool = False
    channels_last: bool = False
    clip_grad: Optional[float] = None
    ema: Any = None
    scaler: Optional[torch.amp.GradScaler] = None
    accum_steps: int = 1
    erase: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # random erasing of a batch, in place (``--reprob``)
    # mixup/cutmix: (images, labels, epoch, step) -> (mixed images, soft targets); accuracy stays on the labels
    mix: Optional[Callable[[torch.Tensor, torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]] = None


def _to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    return (images.contiguous(memory_format=torch.channels_last) if channels_last else images), labels


def _micro_batches(p: StepParts, images: torch.Tensor, labels: torch.Tensor,
                   targets: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]]:
    """This process's batch as ``accum_steps`` micro-batches (fewer when it is shorter), each with whether its
    backward is the last one: under DDP only that one all-reduces, the others run inside ``no_sync``."""
    size = math.ceil(labels.shape[0] / p.accum_steps)
    parts = list(zip(images.split(size), labels.split(size), targets.split(size)))
    for i, (x, y, t) in enumerate(parts):
        yield x, y, t, i == len(parts) - 1


def _forward_backward(p: StepParts, images: torch.Tensor, labels: torch.Tensor, totals: EpochTotals,
                      targets: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """The gradient of the batch's mean loss, summed over its micro-batches, each loss weighted by its share of the
    batch; the loss and accuracy sums go into ``totals``. ``targets`` (mixed soft targets) replace the labels in the
    loss, not in the accuracy. Returns the first non-finite loss (nothing counted), or None."""
    loss_sum, correct = 0.0, 0
    for x, y, t, last in _micro_batches(p, images, labels, labels if targets is None else targets):
        with p.model.no_sync() if not last and hasattr(p.model, "no_sync") else nullcontext():
            with autocast(p.device, p.amp):
                logits = p.model(x)
                loss = p.criterion(logits, t)
            if not bool(torch.isfinite(loss)):
                return loss
            weighted = loss * (y.shape[0] / labels.shape[0])
            (p.scaler.scale(weighted) if p.scaler is not None else weighted).backward()
        loss_sum += loss.item() * y.shape[0]
        correct += (logits.argmax(1) == y).sum().item()
    totals["loss_sum"] += loss_sum
    totals["correct"] += correct
    totals["seen"] += labels.shape[0]
    return None


def _optimiser_step(p: StepParts) -> None:
    """Clipping, the update (through the fp16 grad scaler if there is one), the schedule and the EMA."""
    if p.scaler is not None:
        p.scaler.unscale_(p.optimizer)
    if p.clip_grad:
        nn.utils.clip_grad_norm_(p.model.parameters(), p.clip_grad)
    if p.scaler is not None:
        p.scaler.step(p.optimizer)
        p.scaler.update()
    else:
        p.optimizer.step()
    p.scheduler.step()
    if p.ema is not None:
        p.ema.update(getattr(p.model, "module", p.model))  # the DDP wrapper's inner model


def _skip_step(p: StepParts, loss: torch.Tensor, totals: EpochTotals, epoch: int, skips: int) -> None:
    """A non-finite loss: stop the run before it reaches the weights, or under fp16 skip the step (the scaler
    lowers its scale), stopping only after 20 skips in a row (``skips`` counts them, this one included)."""
    if p.scaler is None:
        raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch + 1}, step {int(totals['steps']) + 1}; "
                                 "nothing was saved from this step on: lower the learning rate or clip the gradient norm")
    if skips > 20:
        raise FloatingPointError(f"non-finite loss for {skips} steps in a row at epoch {epoch + 1}; lower the learning rate")
    p.scaler.update(p.scaler.get_scale() / 2)  # what the scaler does after an overflowing step
    p.scheduler.step()
    totals["skipped"] += 1


def train_one_epoch(parts: StepParts, loader, epoch: int, show_progress: bool = True, totals: Optional[EpochTotals] = None,
                    after_step: Optional[Callable[[EpochTotals], None]] = None) -> dict[str, float]:
    """One pass over ``loader``; returns mean loss, accuracy and throughput (reduced over processes).

    ``totals`` continues an epoch that a mid-epoch checkpoint interrupted (the loader then yields only the rest).
    ``after_step(totals)`` runs after every optimiser step: the caller's place to checkpoint or stop.
    A non-finite loss stops the run, or under fp16 skips the step (``_skip_step``).
    """
    parts.model.train()
    totals = totals if totals is not None else EpochTotals()
    start, seconds_before, skips = time.perf_counter(), totals["seconds"], 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1} train", leave=False, disable=not show_progress or None, dynamic_ncols=True,
               initial=int(totals["steps"]), total=int(totals["steps"]) + len(loader))
    for images, labels in bar:
        images, labels = _to_device(images, labels, parts.device, parts.channels_last)
        if parts.erase is not None:  # after normalisation, as timm erases: noise on the normalised scale
            images = parts.erase(images)
        targets = None
        if parts.mix is not None:  # after erasing, as timm's loader mixes its erased batches
            images, targets = parts.mix(images, labels, epoch, int(totals["steps"]))
        parts.optimizer.zero_grad(set_to_none=True)
        bad_loss = _forward_backward(parts, images, labels, totals, targets)
        skips = 0 if bad_loss is None else skips + 1
        if bad_loss is None:
            _optimiser_step(parts)
            totals["seconds"] = seconds_before + time.perf_counter() - start
            bar.set_postfix(loss=f"{totals['loss_sum'] / totals['seen']:.3f}", img_s=f"{totals['seen'] / max(totals['seconds'], 1e-9):.0f}")
        else:
            parts.optimizer.zero_grad(set_to_none=True)  # what earlier micro-batches accumulated
            _skip_step(parts, bad_loss, totals, epoch, skips)
        totals["steps"] += 1
        if after_step is not None:
            after_step(totals)
    summed = reduce_totals(totals, parts.device)
    elapsed = seconds_before + time.perf_counter() - start
    seen = max(summed["seen"], 1)
    return dict(loss=summed["loss_sum"] / seen, acc=100.0 * summed["correct"] / seen, images_per_s=summed["seen"] / max(elapsed, 1e-9),
                seconds=elapsed, skipped=totals["skipped"])


def reduce_totals(totals: EpochTotals, device: torch.device) -> EpochTotals:
    """The sums over all processes (for a mid-epoch checkpoint, which rank 0 alone will resume with)."""
    loss_sum, correct, seen = _all_reduce([totals["loss_sum"], totals["correct"], totals["seen"]], device)
    return EpochTotals({**totals, "loss_sum": loss_sum, "correct": correct, "seen": seen})


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: torch.device, amp: bool = False, channels_last: bool = False, show_progress: bool = False) -> dict[str, float]:
    """Mean cross-entropy and top-1 accuracy (percent) over ``loader``, reduced over processes."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0.0, 0.0
    for images, labels in tqdm(loader, desc="eval", leave=False, disable=not show_progress or None, dynamic_ncols=True):
        images, labels = _to_device(images, labels, device, channels_last)
        with autocast(device, amp):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        seen += labels.shape[0]
    loss_sum, correct, seen = _all_reduce([loss_sum, correct, seen], device)
    return dict(loss=loss_sum / max(seen, 1), acc=100.0 * correct / max(seen, 1), count=int(seen))


def check_finite_weights(state_dict: dict[str, torch.Tensor], where: str) -> None:
    """Refuse to save weights holding NaN or infinity: they would poison every later resume."""
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise FloatingPointError(f"weights became non-finite {where} ({len(bad)} tensors, e.g. {bad[0]}); "
                                 "not saved, the last checkpoint is kept: lower the learning rate or clip the gradient norm")


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` atomically (see ``files.write_atomically``): the previous checkpoint survives any failure."""
    write_atomically(path, lambda tmp: torch.save(state, tmp))
