"""Peak memory of one bench case: on CPU in a fresh process per case, on a GPU from the allocator's statistics.

Why a fresh process on CPU: inside one process, memory freed by earlier cases stays mapped and makes later peaks
look small; a child process starts clean. The child runs ``_peak_in_this_process``, a plain function (spawned,
so it imports scnet anew and inherits no state).
"""
from __future__ import annotations

import multiprocessing
import os
from typing import Callable, Optional

import torch

from ..hostmem import map_large_blocks_directly
from .cases import DTYPES, MODES, BenchCase, input_dtype, make_inputs, prepare

__all__ = ["cpu_peak_memory", "cuda_peak_memory"]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _peak_in_this_process(case: tuple[str, str, int, int], dtype: str, calls: int, threads: int) -> float:
    """Peak resident memory of ``calls`` calls above the level after building (MB), in the calling process.

    The kernel's high-water mark (VmHWM) is reset just before the calls (``/proc/self/clear_refs``), so the
    transient peaks of importing and building do not count; large blocks are mapped directly, so that what
    the allocator keeps after a free does not count either.
    """
    map_large_blocks_directly()
    model, mode, batch, size = case
    torch.set_num_threads(threads)  # this process is the measurement's own: the parent's thread count
    run = prepare(model, mode, torch.device("cpu"), DTYPES[dtype])
    x, y = make_inputs(batch, size, MODES[mode]["channels_last"], torch.device("cpu"), input_dtype(mode, DTYPES[dtype]))
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for _ in range(calls):
        run(x, y)
    return max(0.0, (_status_kib("VmHWM") - base) / 1024)


def cpu_peak_memory(case: BenchCase, dtype: str, calls: int = 2) -> Optional[float]:
    """Peak memory of ``case`` on CPU (MB): the high-water mark of resident memory during the calls minus the
    resident memory after the model and inputs were built (activations, workspaces, gradients, optimizer state).
    None off Linux, or when the child fails."""
    if not os.path.exists("/proc/self/clear_refs"):  # Linux only
        return None
    spawn = multiprocessing.get_context("spawn")
    try:
        with spawn.Pool(1) as pool:
            return pool.apply(_peak_in_this_process, ((case.model, case.mode, case.batch, case.size), dtype, calls, torch.get_num_threads()))
    except Exception:  # noqa: BLE001 - a case that cannot run in a child has no memory figure, the timing stands
        return None


def cuda_peak_memory(run: Callable, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """The CUDA allocator's peak during one call of ``run``, above what was allocated before it (MB)."""
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run(x, y)
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20
