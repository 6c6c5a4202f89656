"""When one process of a multi-process run fails, every process stops in bounded time, naming it and its cause.

Without this, a process that raises or dies leaves the others blocked in their next collective until the
launcher kills them (torchrun does, on the same node) or the collective timeout runs out (half an hour for gloo
by default), and what they print is a gloo or NCCL traceback that names an address, not a rank.

How: the processes share the process group's key-value store (held by torchrun's agent, or by rank 0 when the
processes were started by hand). A process whose own error ends the run writes one line about it there
(``scnet/failed/<rank>``) before it exits; its exit breaks the others' collectives at once. A process whose
collective broke reads those lines; if there is none (the failed process was killed, or its machine lost), it
marks itself alive and waits ``GRACE_S`` for the others to do the same: a rank that neither failed nor answered
is the one that vanished. Either way it raises ``PeerFailed`` with one line naming that rank.

Limits: a process's exit breaks the others' collectives at once with gloo; with NCCL they wait for the collective
timeout, after which NCCL's watchdog aborts them (no line of ours). When the processes were started by hand, the
store lives in rank 0, so if rank 0 fails the others can only say that they lost rank 0. The census is exact for
two processes (what the tests run); with more, a process still blocked on a living peer when the grace period
ends is named too.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Callable, Iterator, Optional

import torch.distributed as dist

from ..errors import keyword, worded
from .signals import TrainingStopped

__all__ = ["PeerFailed", "shared_failures", "one_line", "process_rank"]

GRACE_S = 5.0  # how long a process whose collective broke waits for the others to say they are alive
_FAILED, _ALIVE = "scnet/failed/", "scnet/alive/"
# Exceptions that end a run without being a failure of this process (every process stops at the same step).
_NOT_FAILURES = (TrainingStopped, KeyboardInterrupt)


class PeerFailed(RuntimeError):
    """Another process of this run failed or vanished, so this one stopped; the message names it and its cause
    (a setting it names is marked ``{dist_timeout}``, worded as ``SettingError``'s are)."""

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.worded(keyword))

    def worded(self, name: Callable[[str], str]) -> str:
        return worded(self.template, ("dist_timeout",), name)

    def __reduce__(self):  # across processes
        return type(self), (self.template,)


def one_line(error: BaseException) -> str:
    """An error as one line: its message, after its type unless it is a user error whose message says it all."""
    text = " ".join(str(error).split()) or repr(error)
    plain = isinstance(error, (ValueError, FloatingPointError, OSError))
    return (text if plain else f"{type(error).__name__}: {text}")[:400]


def _is_collective_error(error: BaseException) -> bool:
    """Broken or timed-out communication (gloo raises plain RuntimeErrors naming itself; NCCL raises DistError)."""
    text = str(error)
    return isinstance(error, dist.DistError) or any(s in text for s in ("gloo", "NCCL", "Connection closed", "Timed out"))


def _store():
    return dist.distributed_c10d._get_default_store()


def _notes(store, rank: int, world: int, key: str) -> dict[int, str]:
    """The other ranks' entries under ``key`` (non-blocking reads: a missing key is not waited for)."""
    found = {}
    for r in range(world):
        if r != rank and store.check([f"{key}{r}"]):
            found[r] = store.get(f"{key}{r}").decode()
    return found


def _diagnose(store, rank: int, world: int, error: BaseException, timeout_s: float) -> Optional[str]:
    """Which other rank ended the run and why, or None when none did (this process's own error).

    Only a broken or timed-out collective can be another process's doing: any other error is this process's own,
    even when the others meet the same one at the same step (a full disk), and each reports its own.
    """
    if not _is_collective_error(error):
        return None
    store.set_timeout(timedelta(seconds=GRACE_S))  # a store that hangs must not hold this process (signals ignored)
    store.set(f"{_ALIVE}{rank}", "1")
    deadline = time.monotonic() + GRACE_S
    while True:
        failed, alive = _notes(store, rank, world, _FAILED), _notes(store, rank, world, _ALIVE)
        silent = [r for r in range(world) if r != rank and r not in failed and r not in alive]
        if failed:
            r = min(failed)
            return f"rank {r} failed: {failed[r]}"
        if not silent or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if not silent:  # everyone is alive and nobody failed: this process's own communication error
        return None
    names = ", ".join(map(str, silent))
    if "Timed out" in str(error):
        return f"rank {names} did not answer within the collective timeout ({timeout_s:g} s, {{dist_timeout}})"
    return f"rank {names} stopped answering: killed, or its machine or network failed"


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """SIGTERM and SIGINT ignored for the few seconds this process takes to find out what failed: a launcher tearing
    the group down (torchrun does, on a failure) would otherwise end it before it says."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def shared_failures(rank: int, world: int, timeout_s: float) -> Iterator[None]:
    """Run a multi-process job so that a failure anywhere ends it everywhere, promptly and with a named cause.

    This process's own error is published for the others and raised as it is; an error caused by another
    process's failure is raised as ``PeerFailed`` naming that process.
    """
    try:
        yield
    except BaseException as error:
        if world == 1 or isinstance(error, _NOT_FAILURES) or not dist.is_initialized():
            raise
        try:
            with _signals_ignored():
                store = _store()
                cause = _diagnose(store, rank, world, error, timeout_s)
                if cause is None:
                    store.set(f"{_FAILED}{rank}", one_line(error))
        except Exception:  # the store is gone: it lived with rank 0 (or its launcher), which is what failed
            cause = None if rank == 0 else "lost contact with rank 0 and the run's store: rank 0 or its machine failed"
        if cause is None:
            raise
        raise PeerFailed(f"rank {rank} stopped: {cause}") from error


def process_rank() -> Optional[int]:
    """This process's rank in a multi-process run started by torchrun (or by hand, with its variables), else None."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
