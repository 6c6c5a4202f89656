"""Run ``scnet <args>`` with one fault injected into one process of a multi-process run (a test driver).

    python tests/inject_rank.py KIND RANK AT scnet-args...      (as a torchrun script, or as each process by hand)

KIND, on process RANK only:
  none   no fault;
  kill   SIGKILL itself after optimiser step AT, on a first attempt only (torchrun restarts run clean);
  raise  raise RuntimeError after optimiser step AT;
  nan    the loss of step AT is NaN (as a diverging shard of data would make it);
  hang   sleep for an hour after optimiser step AT, ending at once when torchrun sends SIGTERM to the survivors (the
         run's own handler would wait for the end of a step that never ends, and torchrun 30 s before SIGKILL);
  data   read the training data from the folder AT instead of the one given by --data-dir.
Before the fault the process prints ``FAULT <kind> <unix time>`` to standard error, so a test can time the exit.
Nothing in the library knows about this driver.
"""
import os
import signal
import sys
import time

import torch


def _announce(kind: str) -> None:
    print(f"FAULT {kind} {time.time():.3f}", file=sys.stderr, flush=True)


def _after_step(kind: str, at: int) -> None:
    """Patch the optimiser step to inject ``kind`` after step ``at``."""
    steps, original = [0], torch.optim.SGD.step

    def step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        steps[0] += 1
        if steps[0] == at:
            _announce(kind)
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "raise":
                raise RuntimeError(f"injected failure after step {at}")
            if kind == "hang":
                signal.signal(signal.SIGTERM, lambda *_: os._exit(128 + signal.SIGTERM))
                time.sleep(3600)
        return out

    torch.optim.SGD.step = step


def _nan_loss(at: int) -> None:
    calls, original = [0], torch.nn.CrossEntropyLoss.forward

    def forward(self, logits, target):
        calls[0] += 1
        loss = original(self, logits, target)
        if calls[0] == at:
            _announce("nan")
            return loss * float("nan")
        return loss

    torch.nn.CrossEntropyLoss.forward = forward


def main(argv: list[str]) -> int:
    kind, rank, at, args = argv[0], int(argv[1]), argv[2], argv[3:]
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if int(os.environ.get("RANK", "0")) == rank and first_attempt:
        if kind in ("kill", "raise", "hang"):
            _after_step(kind, int(at))
        elif kind == "nan":
            _nan_loss(int(at))
        elif kind == "data":
            _announce(kind)
            args[args.index("--data-dir") + 1] = at
        elif kind != "none":
            raise SystemExit(f"unknown fault {kind!r}")
    from scnet.cli import main as scnet

    return scnet(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
