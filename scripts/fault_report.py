"""Run every fault scenario of tests/faults.py and tests/dist_runs.py and write the tables of docs/results/faults/README.md.

    python scripts/fault_report.py docs/results/faults        (from the repository root, as root, about three minutes)

The same scenarios are asserted by tests/test_faults.py and tests/test_distributed.py; this writes down what each did.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import dist_runs  # noqa: E402
import faults  # noqa: E402
from scnet.data import FASHION_MNIST_SYSTEM_DIR  # noqa: E402


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _rank_table(records: list) -> list[str]:
    """The multi-process faults: how long until every process had exited, their exit codes, what each one said."""
    lines = [
        "## One process of a multi-process run fails",
        "",
        f"Two processes (gloo, one thread each) train the demo SCNet on {dist_runs.STEPS_PER_EPOCH} steps an epoch, 2 "
        "epochs; the fault hits rank 1 (`tests/inject_rank.py`). \"By hand\" starts the processes with torchrun's "
        "variables and no launcher, so nothing tears the group down: each process must end by itself (as on "
        "another node). Seconds run from the fault to the exit of the last process (of torchrun, for torchrun); they "
        "include a census of up to 5 s when the failed process left no note (it was killed). The collective "
        "timeout (`--dist-timeout`, default 600 s) bounds the case where a process stops answering but does not exit.",
        "",
        "| fault | launched | seconds to exit | exit codes | messages (rank 0's first) |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        seconds = "" if r.seconds is None else f"{r.seconds:.1f}"
        lines.append(f"| {_cell(r.fault)} | {_cell(r.launcher)} | {seconds} | {r.exit_codes} | {_cell(' / '.join(r.messages))} |")
    lines += ["", "A process whose own error ended the run exits as it would alone (2 for bad input or a non-finite loss, 1 "
              "otherwise, after its traceback); the others exit 1. The hung process's row is the timeout (10 s), the census (5 s) "
              "and torchrun's grace of 30 s before it SIGKILLs the sleeper, which defers SIGTERM to a step boundary it "
              "never reaches. The last row is the elastic restart: torchrun started "
              "the group again and the run continued its last checkpoint by itself (exit 0), to the weights of an "
              "uninterrupted run (`tests/test_distributed.py`).", ""]
    return lines


def main(out: Path) -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        reference_dir = tmp / "reference"
        reference = faults.reference_run(reference_dir)
        records = [
            faults.killed_during_training(tmp, reference, 3, 1),
            faults.killed_during_training(tmp, reference, 11, 2),
            faults.killed_during_training(tmp, reference, 13, None),
            faults.killed_during_training(tmp, reference, 6, None, "SIGTERM"),
            faults.killed_during_training(tmp, reference, 6, None, "SIGINT"),
            faults.killed_inside_checkpoint_write(tmp, reference, 2, None),
            faults.killed_inside_checkpoint_write(tmp, reference, 3, 2),
            faults.disk_full_while_saving(tmp, reference),
            faults.non_finite_loss(tmp, reference),
            faults.malicious_pickle(tmp, reference_dir),
            faults.damaged_checkpoint(tmp, reference_dir, "flipped"),
            faults.damaged_checkpoint(tmp, reference_dir, "truncated"),
            faults.damaged_release(tmp, reference_dir),
            faults.wrong_sha256(tmp, reference_dir),
            faults.truncated_idx(tmp),
            *faults.corrupt_images(tmp),
            faults.unwritable_output(tmp),
            *faults.bad_flags(tmp),
            *faults.run_folders(tmp),
            *faults.bounded_input(tmp),
            *faults.read_back(tmp),
            *faults.bad_model_inputs(),
        ]
        rank_records = dist_runs.rank_faults(tmp, faults.truncated_fashion_mnist(tmp / "fashion-rank1"), FASHION_MNIST_SYSTEM_DIR)
    minutes = (time.perf_counter() - started) / 60
    recovered = [r for r in records if r.weights_equal is not None]
    lines = [
        "# Faults and bad input: what the tools did",
        "",
        f"Written by `python scripts/fault_report.py docs/results/faults` ({minutes:.1f} minutes on a 2-core CPU); "
        "`tests/test_faults.py` asserts the same scenarios. The training run that faults interrupt: the demo SCNet on the "
        f"synthetic dataset, 2 epochs of {faults.STEPS_PER_EPOCH} steps. \"Same as uninterrupted\" means the recovered run "
        "ended with weights, optimiser state and per-epoch losses and accuracies equal (exactly) to a run that was never "
        "interrupted. \"Steps lost\" counts optimiser steps done before the fault that had to be done again.",
        "",
        f"**{len(recovered)} interrupted runs recovered, {sum(r.weights_equal for r in recovered)} of them identical to the "
        f"uninterrupted run; {sum(r.steps_lost or 0 for r in recovered)} steps redone in all. The malicious pickle's payload "
        f"ran: {'yes' if any(r.payload_ran for r in records) else 'no'}.**",
        "",
        "Fuzzing (hypothesis, derandomised, in `tests/test_faults.py`, every CI run): 300 random argument lists for the CLI "
        "parser, 200 random training configurations and 150 random `SCConv` inputs (shapes with zeros, wrong ranks, integer "
        "and bool dtypes). Each one parsed, was refused with a message naming the value, or computed the right shape.",
        "",
        "| fault | what the tool did | exit | message | steps lost | same as uninterrupted |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        same = "" if r.weights_equal is None else ("yes" if r.weights_equal else "**no**")
        lost = "" if r.steps_lost is None else str(r.steps_lost)
        code = "" if r.exit_code is None else str(r.exit_code)
        lines.append(f"| {_cell(r.fault)} | {_cell(r.reaction)} | {code} | {_cell(r.message)} | {lost} | {same} |")
    lines += ["", "Exit codes: 2 for bad input and refused files, 1 for a failed write, 128 + n for signal n "
              "(-9: killed by SIGKILL, no handler can run). Messages are the single line the CLI printed.", ""]
    lines += _rank_table(rank_records)
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines)
    for tmp_prefix in (tmp_name,):  # temporary paths mean nothing to a reader
        text = text.replace(tmp_prefix, "TMP")
    (out / "README.md").write_text(text)
    (out / "faults.json").write_text(json.dumps([asdict(r) for r in records], indent=2, default=str).replace(tmp_name, "TMP"))
    (out / "rank-faults.json").write_text(json.dumps([asdict(r) for r in rank_records], indent=2).replace(tmp_name, "TMP"))
    print(f"{len(records)} scenarios -> {out / 'README.md'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/faults"))
