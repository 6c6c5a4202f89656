"""The timing core of ``scnet bench``: every case built once and warmed up, then timed round-robin.

Why this shape: on shared or small machines absolute timings drift by tens of percent from one minute to the
next, so every configuration is built once and then timed round-robin (one call of each per round, several
rounds), and results are read as ratios within one run. Each model's achieved arithmetic rate is set against
the machine's measured matrix-multiply rate (the "roof"), which says how much speed is left to find.
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch

from ..hostmem import keep_freed_memory
from ..models import create_any_model
from ..profile import count_macs, describe_machine
from .cases import DTYPES, MODES, BenchCase, input_dtype, make_inputs, prepare, torch_settings
from .memory import cpu_peak_memory, cuda_peak_memory

__all__ = ["Rounds", "matmul_roof", "run_bench", "bench_device", "sync"]

Call = tuple[Callable[[torch.Tensor, torch.Tensor], None], torch.Tensor, torch.Tensor]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no GPU is visible")
    return dev


def matmul_roof(device: torch.device, dtype: torch.dtype = torch.float32, n: Optional[int] = None, repeats: int = 5) -> float:
    """GFLOP/s of an n x n x n matrix multiply, the best of ``repeats``: the practical compute ceiling.

    n defaults to 2048 on CPU and 8192 on a GPU, where smaller products cannot fill the chip.
    """
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def _build(cases: Sequence[BenchCase], dev: torch.device, dtype: torch.dtype) -> dict[int, Call]:
    """One runner per (model, mode) and one input per (batch, size, layout, dtype), shared by the cases; each
    case's multiply-adds per image counted on the meta device (no memory, no arithmetic)."""
    runners: dict[tuple[str, str], Callable] = {}
    macs: dict[tuple[str, int], float] = {}
    inputs: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    calls: dict[int, Call] = {}
    for case in cases:
        if (case.model, case.mode) not in runners:
            runners[case.model, case.mode] = prepare(case.model, case.mode, dev, dtype)
        if (case.model, case.size) not in macs:
            with torch.device("meta"):
                macs[case.model, case.size] = count_macs(create_any_model(case.model), (3, case.size, case.size))
        case.macs = macs[case.model, case.size]
        key = (case.batch, case.size, MODES[case.mode]["channels_last"], input_dtype(case.mode, dtype))
        if key not in inputs:
            inputs[key] = make_inputs(*key[:3], dev, key[3])
        calls[id(case)] = (runners[case.model, case.mode], *inputs[key])
    return calls


def _warm_up(cases: Sequence[BenchCase], calls: dict[int, Call], warmup: int, dev: torch.device, bar: Any) -> None:
    """Warm-up (and compilation) calls; on a GPU the last one measures peak memory. A failing case is recorded."""
    for case in cases:
        run, x, y = calls[id(case)]
        done = 0
        try:
            for i in range(warmup):
                if i == warmup - 1 and dev.type == "cuda":
                    case.peak_mem_mb = cuda_peak_memory(run, x, y, dev)
                else:
                    run(x, y)
                sync(dev)
                done += 1
                bar.update()
        except Exception as err:  # one failing configuration is reported, the rest still measured
            case.error = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            bar.update(warmup - done)


def _time_rounds(cases: Sequence[BenchCase], calls: dict[int, Call], repeats: int, dev: torch.device, bar: Any,
                 settle: int) -> None:
    """``repeats`` rounds of one timed call per case, in the same order each round, each after ``settle`` untimed
    calls of the same case: the steady state of a loop that runs one model (its weights in cache, the memory
    allocator holding the blocks its last call freed), not the first call after another model's."""
    for _ in range(repeats):
        for case in cases:
            if not case.error:
                run, x, y = calls[id(case)]
                for _ in range(settle):
                    run(x, y)
                sync(dev)
                start = time.perf_counter()
                run(x, y)
                sync(dev)
                case.times.append(time.perf_counter() - start)
            bar.update()


class Rounds(NamedTuple):
    """How every case is timed: ``warmup`` untimed calls first, then ``repeats`` round-robin rounds, each timed call
    after ``settle`` untimed calls of the same case."""

    repeats: int = 5
    warmup: int = 2
    settle: int = 2

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        """``--repeats``, ``--warmup``, ``--settle`` with these defaults: for ``scnet bench`` and the targets script."""
        d = cls()
        parser.add_argument("--repeats", type=int, default=d.repeats, help=f"timed rounds (default {d.repeats})")
        parser.add_argument("--warmup", type=int, default=d.warmup, help=f"untimed calls per case first (default {d.warmup})")
        parser.add_argument("--settle", type=int, default=d.settle, help="untimed calls of a case before each of its timed "
                            f"calls, so that it is timed warm (default {d.settle})")

    @classmethod
    def from_options(cls, args: argparse.Namespace) -> "Rounds":
        return cls(args.repeats, args.warmup, args.settle)


def run_bench(cases: Sequence[BenchCase], rounds: Rounds = Rounds(), device: str = "cpu", dtype: str = "fp32",
              baseline: Optional[str] = "resnet50", show_progress: bool = True, memory: bool = True,
              keep_memory: bool = False) -> dict[str, Any]:
    """Build each (model, mode) once, warm every case up, then time all cases round-robin (see ``Rounds``).

    With ``memory``, each case's peak memory is measured too: on GPU from the allocator's statistics, on CPU
    in a fresh process per case (not for compiled modes, whose compilation would dominate that process).
    With ``keep_memory``, this process's glibc keeps freed memory for reuse (``hostmem.keep_freed_memory``), as
    ``scnet train`` runs on a CPU; for every case alike, and not where peak memory is measured.
    """
    from tqdm.auto import tqdm

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {tuple(DTYPES)}")
    repeats, warmup, settle = rounds
    if repeats < 1 or warmup < 1:
        raise ValueError(f"repeats and warmup must be >= 1, got {repeats} and {warmup}")
    if settle < 0:
        raise ValueError(f"settle must be >= 0, got {settle}")
    dev, torch_dtype = bench_device(device), DTYPES[dtype]
    kept = keep_memory and keep_freed_memory()
    with torch_settings(dev, freezing=any(MODES[c.mode]["compile"] and not MODES[c.mode]["train"] for c in cases)):
        calls = _build(cases, dev, torch_dtype)
        with tqdm(total=len(cases) * (warmup + repeats), desc="bench", disable=not show_progress or None, dynamic_ncols=True) as bar:
            _warm_up(cases, calls, warmup, dev, bar)
            _time_rounds(cases, calls, repeats, dev, bar, settle)
    if memory and dev.type == "cpu":
        for case in tqdm(cases, desc="peak memory", disable=not show_progress or None, dynamic_ncols=True):
            if not case.error and not MODES[case.mode]["compile"]:
                case.peak_mem_mb = cpu_peak_memory(case, dtype, calls=warmup)
    roof = matmul_roof(dev, torch_dtype if torch_dtype != torch.float16 or dev.type == "cuda" else torch.float32)
    return dict(
        machine=describe_machine(dev), torch=torch.__version__, device=device, dtype=dtype,
        repeats=repeats, warmup=warmup, settle=settle, baseline=baseline, matmul_roof_gflops=roof, memory=memory,
        freed_memory_kept=kept,
        results=[c.summary(roof) for c in cases],
    )
