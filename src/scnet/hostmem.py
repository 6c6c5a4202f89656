"""glibc malloc policies for host memory: the two this project uses, in one place.

PyTorch's CPU tensors come from the C library's ``malloc``. By default glibc returns a large freed block to the
system and maps it anew the next time, so a CPU training step page-faults its activations on every step
(``keep_freed_memory`` avoids that); and it keeps some freed memory in its heap, so the resident high-water mark
also counts memory it merely kept (``map_large_blocks_directly`` avoids that when peak memory is measured).
Elsewhere (musl, macOS, Windows) both do nothing and return False.
"""
from __future__ import annotations

import ctypes
import os

__all__ = ["keep_freed_memory", "keep_freed_memory_on_cpu", "map_large_blocks_directly"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest mmap threshold glibc accepts on 64-bit machines
_GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def _mallopt(*settings: tuple[int, int]) -> bool:
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in settings)


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks of up to 32 MiB for reuse instead of returning them to the system.

    Why: each training step frees and re-allocates the same activations; returned to the system, they are
    page-faulted in again, zeroed, on every step (what that costs: docs/results/bench-cpu-targets). The cost: the
    process keeps its peak memory mapped until it exits. Does nothing where the user set glibc's own ``MALLOC_*_`` variables.
    """
    if any(v in os.environ for v in _GLIBC_VARIABLES):
        return False
    return _mallopt((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, 2**31 - 1))


def map_large_blocks_directly() -> bool:
    """Give every block of 64 KiB or more its own mapping, returned to the system when freed.

    Why: by default glibc raises that threshold as blocks are freed and keeps freed memory in its heap, so the
    resident high-water mark also counts memory the allocator merely kept, which varies by several percent from
    run to run with the order of frees. With a fixed threshold the resident set follows the live tensors. Meant
    for a process that measures peak memory, and nothing else.
    """
    return _mallopt((_M_MMAP_THRESHOLD, 64 * 1024))


def keep_freed_memory_on_cpu() -> bool:
    """``keep_freed_memory`` where training runs on the CPU (no CUDA device): the choice ``scnet train`` and
    ``scnet compare`` make for their processes, so no step page-faults its activations anew. A program that imports
    scnet makes it itself, or not: the library never changes its process's allocator."""
    import torch

    return False if torch.cuda.is_available() else keep_freed_memory()
