"""Which checkpoint a run continues, and with which configuration: ``--resume``, torchrun restarts, and the options a
resumed run may change.

A resumed run keeps its recipe (its saved configuration wins); only where it continues, for how long, how often it
checkpoints and where its data lives may differ. Reading the checkpoint and deciding this happen before any data
or model exists, so a wrong ``--resume`` fails in a second.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from ..files import read_checkpoint
from .config import ConfigError, TrainConfig
from .distributed import job_id, restart_count

__all__ = ["RESUMABLE", "Resumed", "read_training_checkpoint", "resolve_resume", "resume_conflicts", "resume_from"]

# Options a resumed run may take from the command line; every other one is the run's own (a different value is an
# error, ``resume_conflicts``): where it continues, for how long, how often it checkpoints, and where its data is.
RESUMABLE = ("resume", "out", "epochs", "checkpoint_every", "dist_timeout", "data_dir", "download", "workers", "fast_train")

# Settings a restart may differ in without being another run: where to resume, and the launch's own settings.
_LAUNCH_KEYS = ("resume", "dist_timeout")


@dataclass(frozen=True)
class Resumed:
    """The checkpoint a run continues (``state`` None: a fresh run) and where it stands in it."""

    cfg: TrainConfig
    state: Optional[dict[str, Any]] = None
    path: Optional[Path] = None
    epoch: int = 0  # epochs done
    step: int = 0  # steps done of the next epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = -1.0


def resolve_resume(resume: str) -> Path:
    """A run directory (its checkpoint-last.pth) or a checkpoint file."""
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoint-last.pth"
    if not path.is_file():
        raise ConfigError(f"{{resume}} {resume}: no checkpoint found (looked for {path})", "resume")
    return path


def read_training_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint ``scnet train`` wrote, or a one-line error saying what the file is instead."""
    state = read_checkpoint(path)
    missing = [k for k in ("config", "model", "optimizer", "epoch", "history") if k not in state]
    if missing:
        kind = "released weights" if path.suffix == ".safetensors" else "a weights file"
        raise ConfigError(f"{{resume}} {path}: {kind}, not a training checkpoint of scnet train (no {missing[0]!r}): only "
                          f"checkpoint-last.pth or checkpoint-best.pth continue a run; start a new run from these weights "
                          f"with {{checkpoint}} {path}", "resume", "checkpoint")
    return state


def resume_conflicts(resume: str, given: dict[str, Any]) -> None:
    """Refuse options that contradict the run being resumed (one line naming the first): a run keeps its recipe.

    ``given``: the options the user set (flags and YAML), not the defaults.
    """
    saved = read_training_checkpoint(resolve_resume(resume))["config"]
    for key, value in given.items():
        if key not in RESUMABLE and value is not None and saved.get(key) != value:
            allowed = ", ".join("{" + k + "}" for k in RESUMABLE[1:])
            raise ConfigError(f"{{{key}}} {value!r} contradicts the resumed run ({key} is {saved.get(key)!r} there): a resumed "
                              f"run keeps its recipe; only {allowed} may change. Start a new run ({{checkpoint}} {resume} "
                              f"starts from its weights) instead", key, *RESUMABLE[1:], "checkpoint")


def restart_checkpoint(cfg: TrainConfig) -> Optional[tuple[Path, dict[str, Any]]]:
    """Under ``torchrun --max-restarts``, a restarted worker group's checkpoint to continue, and its contents: the last
    complete one this job wrote. None on a first attempt, without a job id (this job's checkpoint could not be told
    from another's), before a first checkpoint, or when the directory holds another job's run (the restart is then a
    fresh start, which refuses to overwrite it)."""
    job = job_id()
    if restart_count() == 0 or job is None:
        return None
    last = (resolve_resume(cfg.resume).parent if cfg.resume else Path(cfg.out)) / "checkpoint-last.pth"
    if not last.is_file():
        return None
    state = read_checkpoint(last)
    same = cfg.resume or all(state["config"].get(k) == v for k, v in cfg.to_dict().items() if k not in _LAUNCH_KEYS)
    return (last, state) if state.get("job") == job and same else None


def resume_from(cfg: TrainConfig, log: Callable[..., None]) -> Resumed:
    """The configuration to run and the checkpoint it continues: the run's own configuration wins; only the epoch
    count and checkpoint interval may change (no --epochs: the run's own planned count). The run continues in the
    folder of its checkpoint, or in ``cfg.out`` when that is set (a copy is made there)."""
    restart = restart_checkpoint(cfg)
    if restart is not None:
        log(f"torchrun restart {restart_count()}: continuing this job's last checkpoint")
        path, state = restart  # read once
        cfg = replace(cfg, resume=str(path))
    elif cfg.resume:
        path = resolve_resume(cfg.resume)
        state = read_training_checkpoint(path)
    else:
        return Resumed(cfg)
    saved = state["config"]
    out = cfg.out or str(path.parent)
    cfg = TrainConfig(**{**saved, "resume": cfg.resume, "out": out, "epochs": cfg.epochs or saved["epochs"],
                         "dist_timeout": cfg.dist_timeout, "checkpoint_every": cfg.checkpoint_every or saved.get("checkpoint_every"),
                         "data_dir": cfg.data_dir or saved.get("data_dir"), "workers": cfg.workers}).validate()
    log(f"resuming {path} at epoch {state['epoch'] + 1}, step {int(state.get('step', 0))}")
    return Resumed(cfg, state, path, state["epoch"], int(state.get("step", 0)), state["history"], state["best_acc"])
