"""Stopping a run cleanly: SIGTERM and SIGINT ask it to stop at the next step boundary, after a checkpoint."""
from __future__ import annotations

import signal
import threading
from typing import Any, Optional

import torch
import torch.distributed as dist

from ..errors import Stopped

__all__ = ["StopSignals", "TrainingStopped"]


class TrainingStopped(Stopped):
    """A signal (SIGTERM, SIGINT) stopped the run after a checkpoint was written; ``--resume`` continues it."""


class StopSignals:
    """While active, SIGTERM and SIGINT only ask the run to stop at the next step boundary (after a checkpoint).

    A second signal of either kind ends the process the usual way. Handlers are installed only in the main
    thread of the main interpreter (the only place Python allows) and the previous ones come back on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
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
