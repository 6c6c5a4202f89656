"""The processes of a run: rank, world size and device from torchrun's environment, and torchrun's job identity.

Kept apart from the run itself so that a plain run, a torchrun launch and a restarted worker group all start the
same way, and so that resume logic can ask which job wrote a checkpoint without setting anything up.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "job_id", "restart_count"]


def init_distributed(timeout_s: float) -> tuple[int, int, torch.device]:
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
    return dist.PrefixStore(f"scnet/restart-{restart_count()}/", shared)


def restart_count() -> int:
    """How many times torchrun has restarted this job's worker group (0 outside torchrun and on a first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def job_id() -> Optional[str]:
    """torchrun's id of this job (its --rdzv-id; a fresh one per --standalone launch), kept across its restarts;
    None outside torchrun and for torchrun's default id "none", which every job without --rdzv-id shares."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    return None if job in (None, "", "none") else job
