"""Fault scenarios for the training tools: each injects one fault, lets the tool react, and records what happened.

Shared by ``test_faults.py`` (which asserts on the records) and ``scripts/fault_report.py`` (which writes them
as the table in docs/results/faults). A scenario returns a ``Record``: the fault, what the tool did (exit code,
its one-line message) and what was lost (steps recomputed; whether the final weights equal an uninterrupted
run's).

Kills happen in a child process whose Python is patched before the CLI runs (``_INJECT``): the optimiser step
or ``torch.save`` counts its calls and, at the chosen one, sends a signal to its own process. Other faults are
patched in-process with ``unittest.mock``. Nothing in the library knows about these hooks.
"""
from __future__ import annotations

import gzip
import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional
from unittest import mock

import torch

from dist_runs import same_weights
from scnet.cli import main
from scnet.files import read_checkpoint
from scnet.train import fit, merge_config

# 256 synthetic training images, batch 32: 8 steps per epoch, 16 in all.
RUN = dict(model="scnet_demo", data="synthetic", batch_size=32, lr=0.05, epochs=2)
STEPS_PER_EPOCH = 8
TOTAL_STEPS = 2 * STEPS_PER_EPOCH
ARGS = ["train", "--model", "scnet_demo", "--data", "synthetic", "--batch-size", "32", "--lr", "0.05", "--epochs", "2"]
QUIET = dict(show_progress=False, log=lambda *a, **k: None)


@dataclass
class Record:
    fault: str
    reaction: str
    exit_code: Optional[int] = None
    message: str = ""
    steps_lost: Optional[int] = None  # optimiser steps done before the fault that had to be redone
    weights_equal: Optional[bool] = None  # the recovered run's final state equals the uninterrupted run's
    payload_ran: Optional[bool] = None
    details: dict[str, Any] = field(default_factory=dict)


# ---- helpers -------------------------------------------------------------------------------------------------
_INJECT = textwrap.dedent('''
    import os, signal, sys, torch
    kind, at, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
    steps, saves = [0], [0]
    original_step, original_save = torch.optim.SGD.step, torch.save
    def step(self, *args, **kwargs):
        out = original_step(self, *args, **kwargs)
        steps[0] += 1
        if kind == "step" and steps[0] == at:
            print(f"STEPS {steps[0]}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), sig)
        return out
    def save(obj, f, *args, **kwargs):
        saves[0] += 1
        if kind == "save" and saves[0] == at:  # half a file in the temporary path, then the signal
            with open(f, "wb") as fh:
                fh.write(b"PK\\x03\\x04 half-written checkpoint")
            print(f"STEPS {steps[0]}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), sig)
        return original_save(obj, f, *args, **kwargs)
    torch.optim.SGD.step, torch.save = step, save
    from scnet.cli import main
    sys.exit(main(sys.argv[4:]))
''')


def run_child(args: list[str], kind: str = "none", at: int = 0, sig: str = "SIGKILL") -> subprocess.CompletedProcess:
    """The CLI in a fresh process, with a signal sent to itself at the ``at``-th optimiser step or torch.save."""
    return subprocess.run([sys.executable, "-c", _INJECT, kind, str(at), sig, *args], capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1"}, timeout=600)


def cli(args: list[str]) -> tuple[int, str]:
    """Exit code and standard error of the CLI run in this process."""
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(args)
    return code, err.getvalue().strip()


def reference_run(out: Path) -> dict[str, Any]:
    """The uninterrupted run every recovered run is compared with (reused when ``out`` already holds it)."""
    if not (out / "metrics.json").is_file():
        fit(merge_config(flags={**RUN, "out": str(out)}), **QUIET)
    return read_checkpoint(out / "checkpoint-last.pth")


def same_training(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal weights, optimiser state and per-epoch metrics (timings aside): the same training happened."""
    if not same_weights(a, b):  # exactly
        return False
    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    return [[h[k] for k in keys] for h in a["history"]] == [[h[k] for k in keys] for h in b["history"]]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip() and not line.startswith(("USDT", "WARNING", "STEPS "))]
    return lines[-1] if lines else ""


def _steps_at_fault(done: subprocess.CompletedProcess) -> int:
    """Optimiser steps the child had finished when its signal was sent (it prints them just before)."""
    return next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("STEPS "))


def _interval(every: Optional[int]) -> str:
    return {None: "checkpoints at epoch ends", 1: "a checkpoint every step"}.get(every, f"checkpoints every {every} steps")


def _steps_done(path: Path) -> int:
    state = read_checkpoint(path)
    return int(state["epoch"]) * STEPS_PER_EPOCH + int(state.get("step", 0))


def _temp_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob(".*.tmp"))


# ---- crashes and signals -------------------------------------------------------------------------------------
def killed_during_training(tmp: Path, reference: dict[str, Any], at_step: int, every: Optional[int], sig: str = "SIGKILL") -> Record:
    """A signal right after optimiser step ``at_step``; then a fresh start (refused) and ``--resume``."""
    out = tmp / f"{sig.lower()}-step{at_step}-every{every}"
    args = [*ARGS, "--out", str(out)] + (["--checkpoint-every", str(every)] if every else [])
    done = run_child(args, "step", at_step, sig)
    saved = _steps_done(out / "checkpoint-last.pth")
    refused, refusal = cli([*ARGS, "--out", str(out)])
    resumed, _ = cli(["train", "--resume", str(out)])
    final = read_checkpoint(out / "checkpoint-last.pth")
    how = "killed at once" if sig == "SIGKILL" else f"checkpoint at step {saved}, clean exit"
    return Record(
        fault=f"{sig} after step {at_step} of {TOTAL_STEPS} ({_interval(every)})",
        reaction=f"{how}; restarting without --resume refused (exit {refused}); --resume from step {saved} finished (exit {resumed})",
        exit_code=done.returncode, message=_last_line(done.stderr) if sig != "SIGKILL" else "",
        steps_lost=at_step - saved, weights_equal=same_training(reference, final),
        details=dict(saved_step=saved, refused=refused, refusal=refusal, resumed=resumed),
    )


def killed_inside_checkpoint_write(tmp: Path, reference: dict[str, Any], at_save: int, every: Optional[int]) -> Record:
    """SIGKILL while the ``at_save``-th checkpoint file is half written; then ``--resume``."""
    out = tmp / f"kill-save{at_save}-every{every}"
    args = [*ARGS, "--out", str(out)] + (["--checkpoint-every", str(every)] if every else [])
    done = run_child(args, "save", at_save, "SIGKILL")
    leftovers = _temp_files(out)
    last = out / "checkpoint-last.pth"
    saved = _steps_done(last) if last.is_file() else 0
    resumed, _ = cli(["train", "--resume", str(out)] if last.is_file() else [*args])
    final = read_checkpoint(last)
    at_fault = _steps_at_fault(done)
    before = f"beside the intact checkpoint of step {saved}" if saved else "(it was the first checkpoint: none complete yet)"
    return Record(
        fault=f"SIGKILL inside checkpoint write no. {at_save}, after step {at_fault} ({_interval(every)})",
        reaction=f"half-written {', '.join(leftovers) or 'temporary file'} left {before}; "
                 f"{'--resume' if saved else 'a fresh start'} removed it and finished (exit {resumed})",
        exit_code=done.returncode, steps_lost=at_fault - saved, weights_equal=same_training(reference, final),
        details=dict(leftovers=leftovers, saved_step=saved, temp_after=_temp_files(out), resumed=resumed),
    )


_LIMITED = """
import resource, signal, sys
file_bytes, memory_bytes = int(sys.argv[1]), int(sys.argv[2])
if file_bytes:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
if memory_bytes:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
from scnet.cli import main
sys.exit(main(sys.argv[3:]))
"""


def run_limited(args: list[str], file_bytes: int = 0, memory_bytes: int = 0) -> tuple[int, str]:
    """The CLI in a fresh process that cannot write a file past ``file_bytes`` (torch.save's and safetensors' own
    writers then fail as on a full disk; torch raises RuntimeError, not OSError) or use more than ``memory_bytes`` of
    address space (a regression that allocates gigabytes fails at once instead of exhausting the machine)."""
    done = subprocess.run([sys.executable, "-c", _LIMITED, str(file_bytes), str(memory_bytes), *args], capture_output=True,
                          text=True, env={**os.environ, "TQDM_DISABLE": "1"}, timeout=600)
    return done.returncode, _last_line(done.stderr)


def disk_full_while_saving(tmp: Path, reference: dict[str, Any]) -> Record:
    """The disk fills while epoch 2's checkpoints are written (files past 1 MB fail); space is freed; ``--resume``."""
    out = tmp / "disk-full"
    fit(merge_config(flags={**RUN, "out": str(out)}), stop_after_epoch=1, **QUIET)
    last = out / "checkpoint-last.pth"
    before = last.read_bytes()
    code, message = run_limited(["train", "--resume", str(out)], file_bytes=1 << 20)
    intact = last.read_bytes() == before
    leftovers = _temp_files(out)
    resumed, _ = cli(["train", "--resume", str(out)])
    return Record(
        fault="disk full while writing the epoch-2 checkpoint (torch.save's own writer fails)",
        reaction=f"one-line error, previous checkpoint byte-identical: {intact}, temporary files left: {len(leftovers)}; "
                 f"after freeing space --resume finished (exit {resumed})",
        exit_code=code, message=message, steps_lost=STEPS_PER_EPOCH, weights_equal=same_training(reference, read_checkpoint(last)),
        details=dict(intact=intact, leftovers=leftovers, resumed=resumed),
    )


def non_finite_loss(tmp: Path, reference: dict[str, Any]) -> Record:
    """The loss turns NaN at step 12 (checkpoints every 2 steps); then ``--resume`` with a healthy loss."""
    out = tmp / "nan-loss"
    original = torch.nn.CrossEntropyLoss.forward
    calls = [0]

    def poisoned(self, logits, target):
        calls[0] += 1
        loss = original(self, logits, target)
        return loss * float("nan") if calls[0] == 12 else loss

    with mock.patch.object(torch.nn.CrossEntropyLoss, "forward", poisoned):
        code, message = cli([*ARGS, "--checkpoint-every", "2", "--out", str(out)])
    state = read_checkpoint(out / "checkpoint-last.pth")
    finite = all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    saved = _steps_done(out / "checkpoint-last.pth")
    resumed, _ = cli(["train", "--resume", str(out)])
    return Record(
        fault="loss becomes NaN at step 12 (no AMP)",
        reaction=f"run stopped before the update; last checkpoint (step {saved}) finite: {finite}; --resume finished (exit {resumed})",
        exit_code=code, message=message, steps_lost=11 - saved,
        weights_equal=same_training(reference, read_checkpoint(out / "checkpoint-last.pth")),
        details=dict(finite=finite, saved_step=saved),
    )


# ---- untrusted and damaged files -----------------------------------------------------------------------------
class _Payload:
    """A pickle that would create ``marker`` when unpickled (os.system at load time)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_pickle(tmp: Path, reference_dir: Path) -> Record:
    """A checkpoint whose unpickling would run a shell command, fed to eval, --resume, predict and create_model."""
    import scnet

    marker = tmp / "PAYLOAD-RAN"
    evil = tmp / "evil" / "checkpoint-last.pth"
    evil.parent.mkdir(parents=True, exist_ok=True)
    state = read_checkpoint(reference_dir / "checkpoint-last.pth")
    state["history"] = _Payload(marker)
    torch.save(state, evil)
    results = {
        "eval": cli(["eval", "--checkpoint", str(evil)]),
        "train --resume": cli(["train", "--resume", str(evil.parent)]),
        "predict": cli(["predict", str(evil), "--checkpoint", str(evil)]),
    }
    try:
        scnet.create_model("scnet_demo", checkpoint_path=str(evil))
        results["create_model"] = (0, "loaded")
    except ValueError as e:
        results["create_model"] = (2, str(e))
    return Record(
        fault="checkpoint whose pickle runs os.system on load",
        reaction="refused by eval, train --resume, predict and create_model, naming the global; " + "; ".join(
            f"{k}: exit {c}" for k, (c, _) in results.items()),
        exit_code=results["eval"][0], message=results["eval"][1], payload_ran=marker.exists(),
        details={k: dict(exit=c, message=m) for k, (c, m) in results.items()},
    )


def damaged_checkpoint(tmp: Path, reference_dir: Path, how: str) -> Record:
    """Bytes flipped inside a tensor, or the file cut in half; then eval and --resume."""
    out = tmp / f"damaged-{how}"
    shutil.copytree(reference_dir, out)
    path = out / "checkpoint-last.pth"
    data = bytearray(path.read_bytes())
    if how == "flipped":
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    code, message = cli(["eval", "--checkpoint", str(path)])
    resumed, resume_message = cli(["train", "--resume", str(out)])
    return Record(
        fault=f"checkpoint {'with 64 bytes flipped inside a tensor' if how == 'flipped' else 'cut to half its size'}",
        reaction=f"eval and --resume refuse it with one line (exit {code}, {resumed}); the damaged file is left as it was",
        exit_code=code, message=message, details=dict(resume=resumed, resume_message=resume_message),
    )


def damaged_release(tmp: Path, reference_dir: Path) -> Record:
    """A released safetensors file with a flipped byte in its tensor data; then eval."""
    path = tmp / "release" / "weights-best.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = bytearray((reference_dir / "weights-best.safetensors").read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    code, message = cli(["eval", "--checkpoint", str(path)])
    return Record(fault="released .safetensors weights with one byte flipped in a tensor",
                  reaction=f"refused: the tensors no longer match the digest stored in the file (exit {code})",
                  exit_code=code, message=message)


def wrong_sha256(tmp: Path, reference_dir: Path) -> Record:
    code, message = cli(["eval", "--checkpoint", str(reference_dir / "checkpoint-last.pth"), "--sha256", "0123456789abcdef"])
    return Record(fault="a checkpoint that does not match the published sha256 (--sha256)",
                  reaction=f"refused before loading (exit {code})", exit_code=code, message=message)


def _idx(path: Path, dims: tuple[int, ...], payload: bytes) -> None:
    header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(gzip.compress(header + payload))


def truncated_fashion_mnist(folder: Path) -> Path:
    """Fashion-MNIST files in ``folder`` whose training images stop after 1,000 of 60,000."""
    folder.mkdir(parents=True, exist_ok=True)
    _idx(folder / "train-images-idx3-ubyte.gz", (60000, 28, 28), bytes(1000 * 28 * 28))
    _idx(folder / "train-labels-idx1-ubyte.gz", (60000,), bytes(60000))
    _idx(folder / "t10k-images-idx3-ubyte.gz", (10000, 28, 28), bytes(10000 * 28 * 28))
    _idx(folder / "t10k-labels-idx1-ubyte.gz", (10000,), bytes(10000))
    return folder


def truncated_idx(tmp: Path) -> Record:
    """Fashion-MNIST files whose training images stop after 1,000 of 60,000."""
    folder = truncated_fashion_mnist(tmp / "fashion-truncated")
    code, message = cli(["train", "--data", "fashion_mnist", "--data-dir", str(folder), "--out", str(tmp / "never")])
    return Record(fault="truncated Fashion-MNIST training images (IDX header says 60,000, file holds 1,000)",
                  reaction=f"refused before training, naming the file (exit {code}); no run directory made: {not (tmp / 'never').exists()}",
                  exit_code=code, message=message)


def corrupt_images(tmp: Path) -> list[Record]:
    """An ImageFolder with one unreadable file among valid PNGs: stop at it, or skip it and count it."""
    from PIL import Image

    root = tmp / "folder"
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for i in range(4):
                Image.new("RGB", (40, 40), (60 * i, 100 if label == "cat" else 200, 30)).save(root / split / label / f"{i}.png")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    base = ["train", "--data", "imagefolder", "--data-dir", str(root), "--image-size", "32", "--batch-size", "4",
            "--epochs", "1", "--lr", "0.01"]
    code, message = cli([*base, "--out", str(tmp / "img-error")])
    skipped, skip_log = 0, ""
    out = io.StringIO()
    with mock.patch("sys.stdout", out):
        skip_code, _ = cli([*base, "--bad-images", "skip", "--out", str(tmp / "img-skip")])
    skip_log = next((line for line in out.getvalue().splitlines() if "unreadable" in line), "")
    return [
        Record(fault="an unreadable image in an ImageFolder (default --bad-images error)",
               reaction=f"stopped before training, naming the file (exit {code})", exit_code=code, message=message),
        Record(fault="the same folder with --bad-images skip",
               reaction=f"left the file out, said so, and trained (exit {skip_code})", exit_code=skip_code,
               message=skip_log, details=dict(skipped_line=skip_log)),
    ]


def unwritable_output(tmp: Path) -> Record:
    blocker = tmp / "a-file"
    blocker.write_text("not a folder")
    code, message = cli([*ARGS, "--out", str(blocker / "run")])
    return Record(fault="--out inside a path that is a file (not writable)", reaction=f"refused before training (exit {code})",
                  exit_code=code, message=message)


def bad_flags(tmp: Path) -> list[Record]:
    config = tmp / "bad.yaml"
    config.write_text("epoch: 3\n")
    cases = [
        ("--batch-size 0", [*ARGS, "--batch-size", "0"]),
        ("--checkpoint-every 0", [*ARGS, "--checkpoint-every", "0"]),
        ("unknown key 'epoch' in a YAML config", ["train", "--config", str(config)]),
        ("unknown model name", ["train", "--model", "scnet5O", "--data", "synthetic"]),
        ("--sha256 that is not hexadecimal", ["eval", "--checkpoint", str(config), "--sha256", "xyz"]),
    ]
    records = []
    for label, args in cases:
        code, message = cli(args)
        records.append(Record(fault=label, reaction=f"one-line error (exit {code})", exit_code=code, message=message))
    return records


def bad_model_inputs() -> list[Record]:
    """The Python API's answers to wrong tensors (rank, channels, dtype, device, empty, NaN with the check on)."""
    import scnet

    model = scnet.create_model("scnet_demo").eval()
    nan = torch.zeros(1, 3, 32, 32)
    nan[0, 0, 0, 0] = float("nan")
    cases = [
        ("a 3-D tensor", torch.zeros(3, 32, 32), False),
        ("1 channel for a 3-channel model", torch.zeros(1, 1, 32, 32), False),
        ("uint8 pixels", torch.zeros(1, 3, 32, 32, dtype=torch.uint8), False),
        ("float64 input, float32 weights", torch.zeros(1, 3, 32, 32, dtype=torch.float64), False),
        ("input on another device", torch.zeros(1, 3, 32, 32, device="meta"), False),
        ("an empty batch", torch.zeros(0, 3, 32, 32), False),
        ("NaN in the input, scnet.set_finite_check(True)", nan, True),
    ]
    records = []
    for label, x, finite in cases:
        previous = scnet.set_finite_check(finite)
        try:
            with torch.no_grad():
                model(x)
            records.append(Record(fault=f"model input: {label}", reaction="accepted"))
        except (ValueError, TypeError) as e:
            records.append(Record(fault=f"model input: {label}", reaction=type(e).__name__, message=str(e)))
        finally:
            scnet.set_finite_check(previous)
    return records


# ---- run folders and bounded input ------------------------------------------------------------------------------
def run_folders(tmp: Path) -> list[Record]:
    """--resume of a moved copy, a contradicting flag, two runs on one folder, a dead run's lock."""
    import json as _json
    import shutil
    import socket

    records = []
    first = tmp / "folders" / "runA"
    fit(merge_config(flags={**RUN, "epochs": 1, "out": str(first)}), **QUIET)
    moved = tmp / "folders" / "moved"
    shutil.copytree(first, moved)
    shutil.rmtree(first)
    code, message = cli(["train", "--resume", str(moved), "--epochs", "2"])
    epoch = read_checkpoint(moved / "checkpoint-last.pth")["epoch"]
    records.append(Record(fault="--resume of a copied run whose original folder was deleted",
                          reaction=f"continued in the copy to epoch {epoch}; the original folder made again: {first.exists()} (exit {code})",
                          exit_code=code))
    before = (moved / "checkpoint-last.pth").read_bytes()
    code, message = cli(["train", "--resume", str(moved), "--lr", "0.5", "--epochs", "3"])
    records.append(Record(fault="--resume with --lr 0.5 (the run's is 0.05)",
                          reaction=f"refused, the run untouched: {(moved / 'checkpoint-last.pth').read_bytes() == before} (exit {code})",
                          exit_code=code, message=message))
    shared = tmp / "folders" / "shared"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    runner = subprocess.Popen([sys.executable, "-m", "scnet.cli", *ARGS, "--epochs", "3", "--checkpoint-every", "1", "--out", str(shared)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (shared / ".lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    runner.send_signal(signal.SIGSTOP)  # the first holds its folder, however long the second takes to start
    try:
        second = subprocess.run([sys.executable, "-m", "scnet.cli", *ARGS, "--lr", "0.1", "--epochs", "1", "--out", str(shared)],
                                env=env, capture_output=True, text=True, timeout=300)
    finally:
        runner.send_signal(signal.SIGCONT)
    first_code = runner.wait(timeout=600)
    kept = read_checkpoint(shared / "checkpoint-last.pth")
    whole = kept["epoch"] == 3 and kept["config"]["lr"] == RUN.get("lr", kept["config"]["lr"]) and "lr: 0.1" not in (shared / "config.yaml").read_text()
    records.append(Record(fault="a second run started on the folder of a running one",
                          reaction=f"the second refused at once (exit {second.returncode}); the first finished (exit {first_code}) "
                                   f"and the folder holds only its files: {whole}",
                          exit_code=second.returncode, message=_last_line(second.stderr)))
    stale = tmp / "folders" / "stale"
    stale.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (stale / ".lock").write_text(_json.dumps(dict(pid=gone.pid, host=socket.gethostname(), started=time.time())))
    out = io.StringIO()
    with redirect_stdout(out):
        code, _ = cli([*ARGS, "--epochs", "1", "--out", str(stale)])
    note = next((line for line in out.getvalue().splitlines() if "no longer running" in line), "")
    records.append(Record(fault="the lock of a run killed by SIGKILL left in its folder",
                          reaction=f"taken over with a note, the run finished (exit {code})", exit_code=code, message=note))
    return records


def bounded_input(tmp: Path) -> list[Record]:
    """Small files that would cost gigabytes or mean two things; each refused or read one way."""
    import struct
    import zlib

    import numpy as np
    from PIL import Image

    folder = tmp / "bounded"
    folder.mkdir()
    strip = folder / "strip.png"
    Image.new("L", (100_000, 1), 128).save(strip)
    header = struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    bomb = folder / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    levels = ["&a [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [f"&{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefg", "bcdefgh")]
    alias = folder / "alias.yaml"
    alias.write_text(f"lr: [{', '.join(levels)}]\n")
    quoted = folder / "quoted.yaml"
    quoted.write_text('amp: "false"\n')
    records = []
    for label, args in [
        (f"predict on a {strip.stat().st_size}-byte PNG of 100000x1 pixels", ["predict", str(strip), "--model", "scnet50"]),
        ("cam on the same PNG", ["cam", str(strip), "--model", "scnet50", "--out", str(folder / "cam")]),
        (f"predict on a {bomb.stat().st_size}-byte PNG declaring 30000x30000 pixels", ["predict", str(bomb), "--model", "scnet50"]),
        (f"a {alias.stat().st_size}-byte YAML alias bomb under lr", ["train", "--config", str(alias), "--data", "synthetic"]),
        ('amp: "false" in a YAML config', ["train", "--config", str(quoted), "--data", "synthetic"]),
        ("--batch-size 4096 on 256 training images", [*ARGS, "--batch-size", "4096", "--out", str(folder / "big-batch")]),
        ("--lr 1e308", [*ARGS, "--lr", "1e308", "--out", str(folder / "huge-lr")]),
    ]:
        start = time.perf_counter()
        code, message = run_limited(args, memory_bytes=4 << 30) if "PNG" in label else cli(args)
        records.append(Record(fault=label, reaction=f"one-line error in {time.perf_counter() - start:.1f} s (exit {code})",
                              exit_code=code, message=message))
    deep = folder / "deep.png"
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)).save(deep)
    from scnet.data.images import open_image

    values = np.asarray(open_image(deep, 1))
    with Image.open(deep) as img:
        clipped = np.asarray(img) >= 255  # what Pillow's own conversion (training's reading before) made white
    records.append(Record(fault="a 16-bit grayscale PNG (values 0-65520)",
                          reaction=f"scaled by 255/65535 in training, eval and predict alike: {(values == 255).mean():.1%} of its "
                                   f"pixels white (Pillow's clipping, training's reading before: {clipped.mean():.1%})",
                          details=dict(white=float((values == 255).mean()), clipped=float(clipped.mean()))))
    return records


# ---- what the tools read back from their own files, and files that are not regular files -------------------------
def _refused(label: str, args: list[str]) -> Record:
    """A case that must end in a one-line refusal: the exit code and message, however the CLI ended."""
    start = time.perf_counter()
    err = io.StringIO()
    try:
        with redirect_stderr(err):
            code = main(args)
    except SystemExit as done:  # argparse's refusals: its usage line, then the error
        code = int(done.code)
    message = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else ""
    return Record(fault=label, reaction=f"refused in {time.perf_counter() - start:.1f} s (exit {code})", exit_code=code, message=message)


def _damaged_chunks(folder: Path) -> list[Record]:
    """A Pathfinder cache chunk damaged four ways; each time a short run trains on the same images."""
    import numpy as np

    from scnet.data import pathfinder

    cache = folder / "cache"
    expected = pathfinder(256, 32, 6, seed=0, cache_dir=cache, progress=False)
    chunk = next((cache / "pathfinder").rglob("seed0/chunk00000.npz"))
    good = chunk.read_bytes()

    def relabel(labels: np.ndarray) -> None:
        with np.load(chunk) as f:
            kept = {k: f[k] for k in f.files}
        with open(chunk, "wb") as out:
            np.savez(out, **{**kept, "labels": labels})

    records = []
    for label, damage in [
        ("a Pathfinder cache chunk with 64 flipped bytes", lambda: chunk.write_bytes(good[:2000] + bytes(b ^ 0xFF for b in good[2000:2064]) + good[2064:])),
        ("a Pathfinder cache chunk cut to 300 kB", lambda: chunk.write_bytes(good[:300_000])),
        ("a Pathfinder cache chunk rewritten with float labels", lambda: relabel(np.full(1000, 0.7))),
        ("a Pathfinder cache chunk rewritten with int8 labels of -1", lambda: relabel(np.full(1000, -1, dtype=np.int8))),
    ]:
        chunk.write_bytes(good)
        damage()
        code, message = cli(["train", "--data", "pathfinder32-6", "--data-dir", str(cache), "--limit-train", "256", "--limit-val",
                             "100", "--epochs", "1", "--batch-size", "32", "--out", str(folder / f"run{len(records)}")])
        same = all(torch.equal(a, b) for a, b in zip(expected, pathfinder(256, 32, 6, seed=0, cache_dir=cache, progress=False)))
        records.append(Record(fault=label, reaction=f"made again with a note, the run trained (exit {code}); the images and labels "
                                                    f"those of a fresh cache: {same}", exit_code=code, message=_last_line(message)))
    return records


def _orphans(folder: Path) -> Record:
    """``scnet train`` SIGKILLed while its generator workers make Pathfinder images: are any left running?"""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    train = subprocess.Popen([sys.executable, "-m", "scnet.cli", "train", "--data", "pathfinder32-9", "--data-dir", str(folder / "gen"),
                              "--limit-train", "40000", "--limit-val", "1000", "--out", str(folder / "gen-run")], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = lambda: [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")  # noqa: E731
                        if _parent_of(p) == train.pid]
    deadline = time.monotonic() + 120
    while len(children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = children()
    train.send_signal(signal.SIGKILL)
    train.wait()
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{p}").exists() for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = sum(Path(f"/proc/{p}").exists() for p in workers)
    return Record(fault=f"SIGKILL to scnet train while {len(workers)} generator workers make Pathfinder images",
                  reaction=f"worker processes left running after 15 s: {left}", details=dict(workers=len(workers), left=left))


def _parent_of(stat: Path) -> int:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def read_back(tmp: Path) -> list[Record]:
    """What the tools read back from their own files (caches, locks, study records, Hub configs) and files that are
    not regular files: each verified before use, refused in one line or made again with a note."""
    import json
    import socket

    import numpy as np
    from PIL import Image

    folder = tmp / "read-back"
    folder.mkdir()
    records = _damaged_chunks(folder)
    for label, owner in [("pid 99999999999999", dict(pid=99999999999999)), ("pid -1", dict(pid=-1)),
                         ("started 1e300", dict(started=1e300)), ("started NaN", dict(started=float("nan")))]:
        run = folder / f"locked-{len(records)}"
        run.mkdir()
        (run / ".lock").write_text(json.dumps({**dict(pid=1, host=socket.gethostname(), started=1.0), **owner}))
        records.append(_refused(f"a run folder's .lock holding {label}", [*ARGS, "--out", str(run)]))
    fifo = folder / "pipe.yaml"
    os.mkfifo(fifo)
    configs = {"base: /dev/zero": "base: /dev/zero\n", "base: a FIFO": f"base: {fifo}\n", "5,000 nested [": "lr: " + "[" * 5000 + "]" * 5000 + "\n"}
    for label, text in configs.items():
        (folder / "c.yaml").write_text(text)
        records.append(_refused(f"a config with {label}", ["train", "--config", str(folder / "c.yaml"), "--data", "synthetic",
                                                           "--out", str(folder / "never")]))
    image = folder / "a.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(image)
    os.mkfifo(folder / "b.png")
    records.append(_refused("scnet predict with a FIFO among its images", ["predict", "--model", "scnet_demo", str(image), str(folder / "b.png")]))
    records += _hub_configs(folder)
    records += _study_records(folder)
    for label, args in [("scnet bench --threads -1", ["bench", "--threads", "-1"]),
                        ("scnet bench --sizes 100000", ["bench", "--models", "scnet_demo", "--sizes", "100000", "--no-memory"]),
                        ("scnet bench --batch-sizes 100000", ["bench", "--models", "scnet_demo", "--batch-sizes", "100000", "--no-memory"])]:
        records.append(_refused(label, args))
    records.append(_float_image(folder))
    records.append(_orphans(folder))
    return records


def _hub_configs(folder: Path) -> list[Record]:
    import json

    import scnet

    hub = folder / "hub"
    model = scnet.create_model("scnet_demo", num_classes=2, in_chans=1, stem_type="small")
    weights = folder / "w.pth"
    torch.save(model.state_dict(), weights)
    cli(["export", "--model", "scnet_demo", "--checkpoint", str(weights), "--num-classes", "2", "--in-chans", "1", "--stem-type", "small",
         "--format", "hf", "--out", str(hub)])
    config = json.loads((hub / "config.json").read_text())
    records = []
    for label, change in [("num_classes 1e9", dict(num_classes=10 ** 9)), ("num_classes 2,000,000", dict(num_classes=2_000_000)),
                          ("an unknown model_args key", dict(model_args={**config["model_args"], "no_such": 1})),
                          ("pretrained_cfg given as a string", dict(pretrained_cfg="imagenet"))]:
        (hub / "config.json").write_text(json.dumps({**config, **change}))
        records.append(_refused(f"a Hub folder's config.json with {label}", ["predict", "--model", f"local-dir:{hub}", str(weights)]))
    return records


def _study_records(folder: Path) -> list[Record]:
    import json

    study = folder / "study"
    base = ["compare", "--models", "scnet_demo", "--data", "synthetic", "--epochs", "1", "--batch-size", "32", "--seeds", "0",
            "--out", str(study)]
    cli(base)
    path = study / "scnet_demo-seed0" / "compare-run.json"
    good = json.loads(path.read_text())
    records = []
    for label, damage in [("no result", lambda r: r.pop("result")), ('final_val_acc "abc"', lambda r: r["result"].update(final_val_acc="abc")),
                          ("final_val_acc NaN", lambda r: r["result"].update(final_val_acc=float("nan"))),
                          ("final_val_acc 250.0", lambda r: r["result"].update(final_val_acc=250.0))]:
        record = json.loads(json.dumps(good))
        damage(record)
        path.write_text(json.dumps(record))
        records.append(_refused(f"a study's compare-run.json with {label}", base))
    path.write_text(json.dumps(good))
    return records


def _float_image(folder: Path) -> Record:
    import numpy as np
    from PIL import Image

    from scnet.data.images import open_image

    path = folder / "float.tif"
    Image.fromarray(np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32), mode="F").save(path)
    mean = float(np.asarray(open_image(path, 1)).mean())
    return Record(fault="a float TIFF (mode F) with values in [0, 1]",
                  reaction=f"read as intensities in [0, 1] in training, eval and predict alike: mean pixel {mean:.1f} of 255 "
                           f"(Pillow's own conversion: black)", details=dict(mean=mean))
