"""How many data-loading processes, and how they start: one rule for every DataLoader of the tools."""
from __future__ import annotations

import multiprocessing
import os
from typing import Any, Optional

__all__ = ["PRELOAD", "data_workers", "loader_options"]

PRELOAD = ("torch", "scnet.data")  # what a fork server imports before it forks workers


def data_workers(requested: Optional[int]) -> int:
    """Data-loading processes: ``requested``, else one fewer than the CPUs this process may use (the training process
    keeps one), shared among the processes torchrun started on this machine (``LOCAL_WORLD_SIZE``), at most 8.
    Which images a run sees does not depend on it for in-memory sets, image folders and Hugging Face datasets
    (``SeededSamples``); a stream of shards is cut by worker (``ShardLoader``)."""
    if requested is not None:
        return requested
    try:
        cpus = len(os.sched_getaffinity(0))  # a container's or taskset's limit, not the machine's count
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    share = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, share - 1))


def loader_options(workers: int) -> dict[str, Any]:
    """DataLoader keywords for ``workers`` processes, started by a fork server where there is one.

    Why not fork: the training process runs threads (torch's, gloo's, a signal watcher); a child forked from it
    inherits their locks mid-use and can hang or crash, which a process forked from the clean server cannot. The
    server imports torch and the datasets once (``PRELOAD``), so a worker starts in milliseconds, not seconds. As with
    spawn (macOS, Windows) and Python 3.14's own default on Linux, a script of yours that trains with workers needs an
    ``if __name__ == "__main__":`` guard: each worker imports it again (``scnet train`` has one)."""
    if not workers:
        return dict(num_workers=0)
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return dict(num_workers=workers, multiprocessing_context="spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))  # read when the server starts (the first workers); later calls change nothing
    return dict(num_workers=workers, multiprocessing_context=context)
