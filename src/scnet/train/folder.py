"""A run folder is owned by one run: checked writable before any work, a lock file while a run writes there, never
a fresh run over another run's checkpoints, and copying a run to continue elsewhere.

Two runs writing one folder leave a mix of both (one's config beside the other's checkpoints), and a run resumed
from a copy must not write back into the folder it was copied from. The lock is a file created exclusively
(``O_CREAT | O_EXCL``: atomic on local filesystems and NFSv3+) holding the owner's pid, host and start time; the
owner removes it when it ends, however it ends. A lock whose process is gone (killed by SIGKILL or the OOM killer)
is detected on the same host and taken over with a line saying so; one from another host cannot be checked, so it
is reported with the way out.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..files import read_checkpoint
from .config import ConfigError

__all__ = ["LOCK", "RUN_FILES", "adopt_folder", "check_out_writable", "copy_run", "own_folder", "prepare_out"]

LOCK = ".lock"
# What a run folder holds of a run (copied when a run is continued elsewhere); anything else is the user's.
RUN_FILES = ("checkpoint-last.pth", "checkpoint-best.pth", "weights-best.safetensors", "log.csv", "config.yaml",
             "metrics.json", "curves.png", "tensorboard")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


PID_MAX = 1 << 22  # Linux's largest pid_max: a larger "pid" names no process (and overflows os.kill)
LOCK_BYTES = 4096  # a lock holds a pid, a host name and a time


def _lock_problem(owner: Any) -> Optional[str]:
    """What makes a parsed lock not one this tool wrote (None when it is): the pid a process id, the host a name,
    the start a time between the epoch and a day from now."""
    if not isinstance(owner, dict):
        return f"it holds {type(owner).__name__}, not an owner"
    pid, host, started = owner.get("pid"), owner.get("host"), owner.get("started")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 1 <= pid < PID_MAX:
        return f"its pid {str(pid)[:40]} is no process id"
    if not isinstance(host, str) or not 0 < len(host) <= 255:
        return f"its host {str(host)[:40]} is no host name"
    if isinstance(started, bool) or not isinstance(started, (int, float)) or not 0 <= started <= time.time() + 86400:
        return f"its start time {str(started)[:40]} is no time"  # NaN fails both comparisons
    return None


def _read_lock(path: Path) -> dict[str, Any]:
    """The owner a lock names; {} when it is empty or cut short (an owner killed while writing it). A lock whose
    contents parse but are not an owner's is refused naming the file: trusting it would signal any process."""
    try:
        with path.open("rb") as f:
            text = f.read(LOCK_BYTES + 1)
        problem = "it is larger than a lock" if len(text) > LOCK_BYTES else _lock_problem(owner := json.loads(text))
    except (OSError, ValueError):
        return {}
    if problem is not None:
        raise ConfigError(f"{path.parent} holds a lock file that this tool did not write ({path}: {problem}); if no run "
                          f"uses this folder, remove {path} and start again")
    return owner


def _describe(owner: dict[str, Any]) -> str:
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "at an unknown time"
    return f"process {owner.get('pid', '?')} on {owner.get('host', 'an unknown host')}, started {when}"


def _take(path: Path) -> bool:
    """Create the lock file if nobody has; True when this process now owns it."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(dict(pid=os.getpid(), host=socket.gethostname(), started=time.time()), f)
    return True


def _acquire(folder: Path, log: Callable[..., None]) -> Path:
    path = folder / LOCK
    for _ in range(3):  # a stale lock removed by us may be taken by another starter first: then it is theirs
        if _take(path):
            return path
        owner = _read_lock(path)
        here = owner.get("host") == socket.gethostname()
        if here and isinstance(owner.get("pid"), int) and owner["pid"] != os.getpid() and not _alive(owner["pid"]):
            log(f"note: {folder} was locked by {_describe(owner)}, which is no longer running (killed?); taking it over")
            path.unlink(missing_ok=True)
            continue
        if not owner and time.time() - path.stat().st_mtime > 60:
            raise ConfigError(f"{folder} holds a lock file that names no owner ({path}); if no run uses this folder, "
                              f"remove {path} and start again")
        who = _describe(owner) if owner else "a run that is just starting"
        hint = "" if here else f"; if that process is gone (its machine failed), remove {path}"
        raise ConfigError(f"{folder} is in use by another run ({who}); wait for it to end or choose another {{out}}{hint}", "out")
    raise ConfigError(f"{folder}: could not take its lock ({path}); try again")


@contextlib.contextmanager
def own_folder(folder: Path, log: Callable[..., None] = print) -> Iterator[None]:
    """Hold ``folder`` (made if missing) for one run: refuse when another live run holds it, take over a dead run's
    lock with a note, remove the lock however the run ends, and remove the folder again if it was made here and the
    run left nothing in it (a run that failed before writing anything)."""
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"output directory {folder} is not writable ({e.strerror or e})") from e
    try:
        lock = _acquire(folder, log)
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        if made:
            with contextlib.suppress(OSError):  # not empty: the run's files stay
                folder.rmdir()


def copy_run(source: Path, target: Path, log: Callable[..., None] = print) -> None:
    """Copy a run's files from ``source`` to ``target`` (made, and empty of any run) to continue it there, leaving
    ``source`` as it was."""
    held = [name for name in RUN_FILES if (target / name).exists()]
    if held:
        raise ConfigError(f"{{out}} {target} already holds a run ({held[0]}); a resumed run is copied only into a new or "
                          f"empty folder; choose another {{out}}", "out")
    target.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, target / name)
        elif src.is_file():
            shutil.copy2(src, target / name)
    log(f"copied the run in {source} to {target}; continuing there ({source} is left as it was)")


def check_out_writable(out: Path) -> None:
    """Fail before any work if ``out`` cannot be made or written, without creating anything yet."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output directory {out} is not writable ({existing} is not a directory)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {out} is not writable (no write permission on {existing})")


def prepare_out(out: Path) -> None:
    """Make ``out`` and prove it takes a file, then drop the temporary files a killed process left half-written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output directory {out} is not writable ({e.strerror or e})") from e
    for stale in out.glob(".*.tmp"):
        stale.unlink()


def _check_run_directory(out: Path) -> None:
    """Refuse to start a fresh run over another run's checkpoints: say what is there and how to go on."""
    last = out / "checkpoint-last.pth"
    if not last.is_file():
        return
    try:
        state = read_checkpoint(last)
        done, steps = int(state.get("epoch", 0)), int(state.get("step", 0))
        planned = int(state.get("config", {}).get("epochs", 0))
    except (ValueError, OSError) as e:
        raise ConfigError(f"{out} holds a checkpoint that cannot be read ({e}); choose another {{out}}", "out") from e
    if done >= planned and not steps:
        raise ConfigError(f"{out} already holds a finished run ({done} epochs); choose another {{out}}, or continue it "
                          f"for more epochs with {{resume}} {out} {{epochs}} N", "out", "resume", "epochs")
    where = f"epoch {done + 1}, step {steps}" if steps else f"after epoch {done}"
    raise ConfigError(f"{out} holds an unfinished run (stopped {where} of {planned} epochs); continue it with "
                      f"{{resume}} {out}, or choose another {{out}}", "resume", "out")


def adopt_folder(out: Path, resumed: Optional[Path], log: Callable[..., None] = print) -> None:
    """With ``out`` held: a fresh run (``resumed`` None) refuses another run's checkpoints; a run resumed from a
    checkpoint in another folder (``--resume A --out B``) copies A's run there first."""
    if resumed is None:
        _check_run_directory(out)
    elif resumed.parent.resolve() != out.resolve():
        copy_run(resumed.parent, out, log)
