"""Multi-process training runs for the tests and the faults report: started by hand, by torchrun on one host, and by
torchrun on two "hosts" (two network namespaces joined by a veth pair).

Shared by ``test_distributed.py`` (which asserts) and ``scripts/fault_report.py`` (which writes the table in
docs/results/faults). Faults are injected by ``inject_rank.py`` into one process; the library knows nothing of it.
"""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from scnet.files import read_checkpoint

INJECT = str(Path(__file__).with_name("inject_rank.py"))
# GroupNorm and the "small" stem without max-pool, as in test_train: two processes then train what one would.
# 128 images in batches of 32: 4 steps an epoch.
ARGS = ["train", "--data", "synthetic", "--limit-train", "128", "--limit-val", "64", "--batch-size", "32", "--lr", "0.01",
        "--warmup-epochs", "0", "--norm-layer", "groupnorm", "--stem-type", "small"]
STEPS_PER_EPOCH = 4
ENV = {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}  # one thread a process: the same summation order everywhere
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


@dataclass
class Ranks:
    """What each process of a run did: exit codes, standard error, and seconds from the fault to its exit."""

    codes: list[Optional[int]]
    stderr: list[str]
    seconds: list[Optional[float]] = field(default_factory=list)

    def last_lines(self) -> list[str]:
        return [_last_line(text) for text in self.stderr]


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(("FAULT ", "[W", "WARNING"))]
    return lines[-1] if lines else ""


def _fault_time(text: str) -> Optional[float]:
    return next((float(line.split()[2]) for line in text.splitlines() if line.startswith("FAULT ")), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> list[Optional[float]]:
    """Each process's exit time (None for those still running at ``timeout``, which are then killed)."""
    ended: list[Optional[float]] = [None] * len(procs)
    deadline = time.monotonic() + timeout
    while any(t is None for t in ended) and time.monotonic() < deadline:
        for i, p in enumerate(procs):
            if ended[i] is None and p.poll() is not None:
                ended[i] = time.time()
        time.sleep(0.05)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    return ended


def by_hand(tmp: Path, args: list[str], fault: tuple[str, int, str] = ("none", 0, "0"), world: int = 2, timeout: float = 300) -> Ranks:
    """``world`` processes started directly with torchrun's variables, as a launcher that does not tear a group down
    would (e.g. one process per node): how they end is then up to the library alone."""
    base = {**os.environ, **ENV, "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    logs = [tmp / f"rank{r}.err" for r in range(world)]
    procs = []
    for r in range(world):
        with open(logs[r], "w") as err:
            procs.append(subprocess.Popen([sys.executable, INJECT, *map(str, fault), *args], stdout=subprocess.DEVNULL, stderr=err,
                                          env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}))
    ended = _wait_all(procs, timeout)
    stderr = [log.read_text() for log in logs]
    start = next((t for t in map(_fault_time, stderr) if t is not None), None)
    seconds = [None if e is None or start is None else round(e - start, 1) for e in ended]
    return Ranks([p.returncode if e is not None else None for p, e in zip(procs, ended)], stderr, seconds)


def torchrun(args: list[str], launch: list[str], fault: tuple[str, int, str] = ("none", 0, "0"), timeout: float = 600) -> subprocess.CompletedProcess:
    """``torchrun <launch> inject_rank.py <fault> <args>`` on this host."""
    return subprocess.run([*TORCHRUN, *launch, INJECT, *map(str, fault), *args], capture_output=True, text=True,
                          env={**os.environ, **ENV}, timeout=timeout)


def two_process_reference(out: Path, extra: list[str]) -> dict[str, Any]:
    """The uninterrupted 2-process run on one host (torchrun --standalone) that the other runs are compared with."""
    if not (out / "metrics.json").is_file():
        done = torchrun([*ARGS, *extra, "--out", str(out)], ["--standalone", "--nproc_per_node", "2"])
        assert done.returncode == 0, done.stderr[-3000:]
    return read_checkpoint(out / "checkpoint-last.pth")


def same_weights(a: dict[str, Any], b: dict[str, Any], rtol: float = 0.0, atol: float = 0.0) -> bool:
    """Equal weights and momentum buffers (to the tolerance) after the same number of epochs."""
    if a["epoch"] != b["epoch"] or b.get("step", 0) or a["model"].keys() != b["model"].keys():
        return False
    close = lambda x, y: torch.allclose(x.double(), y.double(), rtol=rtol, atol=atol) if x.is_floating_point() else torch.equal(x, y)
    return (all(close(v, b["model"][k]) for k, v in a["model"].items())
            and all(close(v["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"]) for k, v in a["optimizer"]["state"].items()))


def logged_metrics(run: Path) -> list[list[str]]:
    """log.csv without its timings: what a person reads as the run's result, digit for digit."""
    with open(run / "log.csv") as f:
        return [[row[k] for k in ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")] for row in csv.DictReader(f)]


class HostsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (no root, or ``ip netns`` not permitted)."""


class TwoHosts:
    """Two "hosts": network namespaces joined by a veth pair, 10.77.0.1 and 10.77.0.2, on one file system.

    They share the hostname, as two containers on one machine would; each process must therefore be told its own
    address (torchrun's ``--local-addr``), which end holds the rendezvous (``is_host``), and gloo's interface.
    """

    ADDRESSES = ("10.77.0.1", "10.77.0.2")

    def __init__(self) -> None:
        tag = f"scn{os.getpid() % 100000}"
        self.namespaces, self.interfaces = (f"{tag}a", f"{tag}b"), (f"{tag}x", f"{tag}y")

    def _ip(self, *argv: str) -> None:
        done = subprocess.run(["ip", *argv], capture_output=True, text=True)
        if done.returncode:
            raise HostsUnavailable(f"ip {' '.join(argv)}: {done.stderr.strip() or done.returncode}")

    def __enter__(self) -> "TwoHosts":
        try:
            for ns in self.namespaces:
                self._ip("netns", "add", ns)
            self._ip("link", "add", self.interfaces[0], "type", "veth", "peer", "name", self.interfaces[1])
            for ns, dev, addr in zip(self.namespaces, self.interfaces, self.ADDRESSES):
                self._ip("link", "set", dev, "netns", ns)
                self._ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
                self._ip("-n", ns, "link", "set", dev, "up")
                self._ip("-n", ns, "link", "set", "lo", "up")
        except (HostsUnavailable, FileNotFoundError) as e:
            self.__exit__()
            raise HostsUnavailable(str(e)) from e
        return self

    def __exit__(self, *exc: Any) -> None:
        for ns in self.namespaces:  # removing a namespace removes its end of the veth pair, and so the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def command(self, host: int, argv: list[str], read_only: Optional[Path] = None) -> list[str]:
        """``argv`` on host 0 or 1 (its interface for gloo); ``read_only``: a folder this host may read but not write,
        checked before ``argv`` starts (a bind mount in the process's own mount namespace)."""
        env = ["env", *(f"{k}={v}" for k, v in ENV.items()), f"GLOO_SOCKET_IFNAME={self.interfaces[host]}"]
        inner = [*env, *argv]
        if read_only is not None:
            script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && ! touch "$0/.probe" 2>/dev/null && exec "$@"'
            inner = ["unshare", "--mount", "sh", "-c", script, str(read_only), *inner]
        return ["ip", "netns", "exec", self.namespaces[host], *inner]

    def torchrun(self, args: list[str], port: int = 29400, run_id: str = "scnet-two-hosts", read_only: Optional[Path] = None,
                 timeout: float = 600) -> list[subprocess.CompletedProcess]:
        """The same ``torchrun --nnodes 2 ... -m scnet <args>`` on both hosts at once; host 1 sees ``read_only`` read-only."""
        procs, files = [], []
        for host, addr in enumerate(self.ADDRESSES):
            launch = [*TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-id", run_id,
                      "--rdzv-endpoint", f"{self.ADDRESSES[0]}:{port}", "--rdzv-conf", f"is_host={int(host == 0)}",
                      "--local-addr", addr, "-m", "scnet", *args]
            files.append((tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")))  # pipes could fill and block
            procs.append(subprocess.Popen(self.command(host, launch, read_only if host else None), stdout=files[-1][0], stderr=files[-1][1]))
        _wait_all(procs, timeout)
        results = []
        for p, (out, err) in zip(procs, files):
            out.seek(0), err.seek(0)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out.read(), err.read()))
            out.close(), err.close()
        return results


# ---- the faults report ---------------------------------------------------------------------------------------
@dataclass
class RankFault:
    """One fault of a multi-process run, as the faults report lists it."""

    fault: str
    launcher: str
    seconds: Optional[float]  # from the fault to the exit of the last process (or of torchrun)
    exit_codes: str
    messages: list[str]  # the one-line messages the processes printed, rank 0's first


def _scnet_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("scnet train:")]


def _by_hand_fault(tmp: Path, name: str, fault: tuple[str, int, str], extra: list[str]) -> RankFault:
    folder = tmp / name.replace(" ", "-")
    folder.mkdir(parents=True)
    ranks = by_hand(folder, [*ARGS, *extra, "--epochs", "2", "--dist-timeout", "300", "--out", str(folder / "run")], fault)
    codes = ", ".join(f"rank {r}: {c}" for r, c in enumerate(ranks.codes))
    seconds = max(ranks.seconds) if all(s is not None for s in ranks.seconds) else None
    return RankFault(name, "by hand (2 processes)", seconds, codes, [line for line in ranks.last_lines() if line.startswith("scnet")])


def _torchrun_fault(tmp: Path, name: str, fault: tuple[str, int, str], launch: list[str], extra: list[str]) -> RankFault:
    out = tmp / name.replace(" ", "-")
    done = torchrun([*ARGS, *extra, "--epochs", "2", "--out", str(out)], ["--standalone", "--nproc_per_node", "2", *launch], fault)
    ended, start = time.time(), _fault_time(done.stderr)
    return RankFault(name, f"torchrun {' '.join(launch)}".strip(), None if start is None else round(ended - start, 1),
                     f"torchrun: {done.returncode}", _scnet_lines(done.stderr))


def rank_faults(tmp: Path, fashion_truncated: Path, fashion_dir: Path) -> list[RankFault]:
    """Every multi-process fault of the report, each in its own folder under ``tmp``."""
    fashion = ["--data", "fashion_mnist", "--data-dir", str(fashion_dir)]
    return [
        _by_hand_fault(tmp, "unreadable training data on rank 1 only", ("data", 1, str(fashion_truncated)), fashion),
        _by_hand_fault(tmp, "RuntimeError raised on rank 1 after step 3", ("raise", 1, "3"), []),
        _by_hand_fault(tmp, "NaN loss on rank 1 only at step 3", ("nan", 1, "3"), []),
        _by_hand_fault(tmp, "rank 1 SIGKILLed after step 3", ("kill", 1, "3"), []),
        _torchrun_fault(tmp, "rank 1 SIGKILLed after step 3, no restarts left", ("kill", 1, "3"), [], []),
        _torchrun_fault(tmp, "rank 1 hangs after step 3 (--dist-timeout 10)", ("hang", 1, "3"), [], ["--dist-timeout", "10"]),
        _torchrun_fault(tmp, "rank 1 SIGKILLed after step 3, checkpoints every 2 steps, restarts left", ("kill", 1, "3"),
                        ["--max-restarts", "1"], ["--checkpoint-every", "2"]),
    ]
