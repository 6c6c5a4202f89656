"""Fault injection: crashes, signals, full disks, NaN, untrusted and damaged files, bad input, fuzzed input.

Each scenario lives in ``faults.py`` (also run by ``scripts/fault_report.py`` for the report table); the tests
here hold the tool to what it promises: nothing lost but the steps since the last checkpoint, recovered runs
identical to uninterrupted ones, one-line errors, and no code from a file ever run.
"""
from __future__ import annotations

import argparse
import re
import signal
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import faults
import scnet
from scnet.cli import build_parser
from scnet.train.engine import check_finite_weights


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("reference") / "run"
    return faults.reference_run(out), out


def _one_line(message: str) -> bool:
    return bool(message) and "\n" not in message and "Traceback" not in message


@pytest.mark.slow
@pytest.mark.parametrize("at_step,every", [(11, 2), (13, None), (3, 1)])
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path: Path, reference, at_step: int, every) -> None:
    record = faults.killed_during_training(tmp_path, reference[0], at_step, every)
    assert record.exit_code == -signal.SIGKILL
    assert record.details["refused"] == 2 and "--resume" in record.details["refusal"]  # a fresh start would overwrite
    assert record.details["resumed"] == 0 and record.weights_equal
    # Only the steps since the last checkpoint are redone: at most the interval, or the epoch without --checkpoint-every
    # (the kill lands after the optimiser step, before that step's checkpoint).
    assert 1 <= record.steps_lost <= (every or faults.STEPS_PER_EPOCH)


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_sigterm_and_sigint_checkpoint_the_current_step_and_exit_cleanly(tmp_path: Path, reference, sig: str, code: int) -> None:
    record = faults.killed_during_training(tmp_path, reference[0], 6, None, sig)
    assert record.exit_code == code and _one_line(record.message)
    assert f"stopped by {sig} at epoch 1, step 6 of 8" in record.message and "--resume" in record.message
    assert record.steps_lost == 0 and record.details["saved_step"] == 6  # a checkpoint at the very step, not the epoch
    assert record.weights_equal


@pytest.mark.slow
@pytest.mark.parametrize("at_save,every", [(2, None), (3, 2)])
def test_sigkill_inside_the_checkpoint_write(tmp_path: Path, reference, at_save: int, every) -> None:
    record = faults.killed_inside_checkpoint_write(tmp_path, reference[0], at_save, every)
    assert record.exit_code == -signal.SIGKILL
    # The half-written file (named by its writer's pid), never the real one.
    assert len(record.details["leftovers"]) == 1 and re.fullmatch(r"\.checkpoint-last\.pth\.\d+\.tmp", record.details["leftovers"][0])
    assert record.details["temp_after"] == [] and record.details["resumed"] == 0 and record.weights_equal
    assert 1 <= record.steps_lost <= (every or faults.STEPS_PER_EPOCH)


def test_disk_full_keeps_the_previous_checkpoint(tmp_path: Path, reference) -> None:
    record = faults.disk_full_while_saving(tmp_path, reference[0])
    assert record.exit_code == 1 and _one_line(record.message)
    assert "could not write" in record.message and "checkpoint-best.pth" in record.message
    assert "is the disk full?" in record.message and "previous file is intact" in record.message
    assert record.details["intact"] and record.details["leftovers"] == [] and record.details["resumed"] == 0


def test_a_failed_release_write_is_one_line_and_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """safetensors raises its own SafetensorError when the disk fills; worded and cleaned like every write."""
    import safetensors.torch
    from safetensors import SafetensorError

    from scnet.files import write_release

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    target = tmp_path / "weights.safetensors"
    with pytest.raises(OSError, match=r"could not write .*weights.safetensors \(the writer failed, is the disk full\? "
                                      r"SafetensorError: .*StorageFull.*\); no earlier file existed"):
        write_release({"w": torch.zeros(2)}, target, {})
    assert list(tmp_path.iterdir()) == []


def test_a_writer_that_fails_for_another_reason_is_not_blamed_on_the_disk(tmp_path: Path) -> None:
    from scnet.files import write_atomically

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise ValueError("the graph has an unsupported operator\nat node 3")

    with pytest.raises(OSError, match=r"could not write .*model.onnx \(the writer failed: ValueError: the graph has an "
                                      r"unsupported operator\); no earlier file existed") as err:
        write_atomically(tmp_path / "model.onnx", broken)
    assert "disk" not in str(err.value) and list(tmp_path.iterdir()) == []


def test_non_finite_loss_stops_before_the_weights_change(tmp_path: Path, reference) -> None:
    record = faults.non_finite_loss(tmp_path, reference[0])
    assert record.exit_code == 2 and _one_line(record.message) and "non-finite loss nan at epoch 2, step 4" in record.message
    assert record.details["finite"] and record.details["saved_step"] == 10
    assert record.weights_equal


def test_non_finite_weights_are_never_saved(tmp_path: Path) -> None:
    from unittest import mock

    with pytest.raises(FloatingPointError, match="1 tensors, e.g. fc.weight"):
        check_finite_weights({"conv.weight": torch.zeros(2), "fc.weight": torch.tensor([1.0, float("inf")])}, "at epoch 2")
    # In a run: a norm's running variance turns infinite after step 3 (train-mode forward passes do not read it,
    # so the loss stays finite); the checkpoint due after step 4 is refused and the one of step 2 stays.
    import scnet.train.runner as runner

    built, original, calls = [], torch.optim.SGD.step, [0]

    def capture(*args, **kwargs):
        built.append(runner_build(*args, **kwargs))
        return built[-1]

    def poisoning_step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 3:
            built[0].bn1.running_var.fill_(float("inf"))
        return out

    runner_build = runner.build_model_for
    out = tmp_path / "run"
    with mock.patch.object(runner, "build_model_for", capture), mock.patch.object(torch.optim.SGD, "step", poisoning_step), \
            pytest.raises(FloatingPointError, match=r"weights became non-finite at epoch 1, step 4 \(1 tensors, e.g. bn1.running_var\)"):
        faults.fit(faults.merge_config(flags={**faults.RUN, "checkpoint_every": 2, "out": str(out)}), **faults.QUIET)
    state = faults.read_checkpoint(out / "checkpoint-last.pth")
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_malicious_pickle_never_runs(tmp_path: Path, reference) -> None:
    record = faults.malicious_pickle(tmp_path, reference[1])
    assert record.payload_ran is False and not (tmp_path / "PAYLOAD-RAN").exists()
    for entry in record.details.values():
        assert entry["exit"] == 2 and "'posix.system'" in entry["message"] and "could run code" in entry["message"]


@pytest.mark.parametrize("how", ["flipped", "truncated"])
def test_damaged_checkpoints_are_refused(tmp_path: Path, reference, how: str) -> None:
    record = faults.damaged_checkpoint(tmp_path, reference[1], how)
    assert record.exit_code == 2 and record.details["resume"] == 2 and _one_line(record.message)
    assert ("CRC-32" if how == "flipped" else "damaged") in record.message


def test_damaged_release_and_wrong_sha256_are_refused(tmp_path: Path, reference) -> None:
    release = faults.damaged_release(tmp_path, reference[1])
    assert release.exit_code == 2 and "do not match the digest" in release.message
    wrong = faults.wrong_sha256(tmp_path, reference[1])
    assert wrong.exit_code == 2 and "expected 0123456789abcdef" in wrong.message


def test_truncated_idx_and_corrupt_images(tmp_path: Path) -> None:
    idx = faults.truncated_idx(tmp_path)
    assert idx.exit_code == 2 and "train-images-idx3-ubyte.gz is truncated" in idx.message and not (tmp_path / "never").exists()
    error, skip = faults.corrupt_images(tmp_path)
    assert error.exit_code == 2 and "broken.jpg cannot be read" in error.message and "--bad-images skip" in error.message
    assert skip.exit_code == 0 and "left out 1 unreadable image files" in skip.message


def test_bad_output_and_flags_are_one_line_errors(tmp_path: Path) -> None:
    records = [faults.unwritable_output(tmp_path), *faults.bad_flags(tmp_path)]
    for r in records:
        assert r.exit_code == 2 and _one_line(r.message), r
    assert "did you mean 'epochs'" in records[3].message


def test_bad_model_inputs_get_clear_errors() -> None:
    records = faults.bad_model_inputs()
    assert all(r.reaction in ("ValueError", "TypeError") for r in records), records
    text = " ".join(r.message for r in records)
    for phrase in ("4-D", "3 input channels", "floating-point", "torch.float64", "meta", "empty", "NaN"):
        assert phrase in text


# ---- fuzzing ---------------------------------------------------------------------------------------------------
_TOKENS = st.sampled_from(["train", "eval", "bench", "info", "--epochs", "--batch-size", "--lr", "--model", "--data", "-1", "0",
                           "3", "1e9", "nan", "abc", "--modes", "--sizes", "x", "--checkpoint", "--sha256", "--", "-", "--debug"])


@settings(max_examples=300)
@given(st.lists(_TOKENS | st.text(max_size=8), max_size=8))
def test_fuzz_cli_parser_exits_cleanly_or_parses(argv: list[str]) -> None:
    parser = build_parser()
    parser.exit = lambda status=0, message=None: (_ for _ in ()).throw(SystemExit(status))  # no stderr noise
    parser.error = lambda message: (_ for _ in ()).throw(SystemExit(2))
    for sub in parser._subparsers._group_actions[0].choices.values():
        sub.error = parser.error
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        assert e.code in (0, 2)
        return
    assert isinstance(args, argparse.Namespace) and callable(args.func)


@settings(max_examples=200)
@given(train_values=st.fixed_dictionaries({}, optional={
    "epochs": st.integers(-3, 3) | st.floats(allow_nan=True) | st.booleans() | st.none(),
    "batch_size": st.integers(-3, 3) | st.text(max_size=3) | st.none(),
    "lr": st.floats(allow_nan=True, allow_infinity=True, width=32) | st.integers(-2, 2) | st.none(),
    "checkpoint_every": st.integers(-2, 2) | st.booleans() | st.none(),
    "workers": st.integers(-2, 2) | st.none(),
    "label_smoothing": st.floats(-1, 2) | st.none(),
    "ema_decay": st.floats(-1, 2) | st.none(),
    "opt": st.sampled_from(["sgd", "adamw", "adam", ""]) | st.none(),
}))
def test_fuzz_config_values_are_accepted_or_named(train_values: dict) -> None:
    from scnet.train.config import ConfigError, merge_config

    try:
        cfg = merge_config(flags=train_values)
    except (ConfigError, TypeError) as e:
        assert str(e)
        return
    assert cfg.epochs >= 1 and cfg.batch_size >= 1 and cfg.lr > 0


_SC = scnet.SCConv(4, 6).eval()


@settings(max_examples=150)
@given(shape=st.lists(st.integers(0, 9), min_size=0, max_size=5), dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool]))
def test_fuzz_scconv_inputs(shape: list[int], dtype: torch.dtype) -> None:
    x = torch.zeros(shape, dtype=dtype)
    try:
        with torch.no_grad():
            y = _SC(x)
    except (ValueError, TypeError) as e:
        assert str(e)
        return
    n, c, h, w = shape
    assert dtype == torch.float32 and c == 4 and y.shape == (n, 6, h, w) and torch.isfinite(y).all()


def test_exported_safetensors_declare_their_architecture(tmp_path: Path) -> None:
    import hashlib

    from scnet.export import export_safetensors
    from scnet.models.weights import verify_sha256

    model = scnet.create_model("scnet_demo", num_classes=7)
    path = tmp_path / "demo.safetensors"
    meta = export_safetensors(model, "scnet_demo", path)
    assert meta["arch"] == "scnet_demo" and meta["num_classes"] == "7" and meta["scnet_version"] == scnet.__version__
    loaded = scnet.create_model("scnet_demo", num_classes=7, checkpoint_path=str(path))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=r"holds weights of scnet_demo \(num_classes 7, in_chans 3\), not scnet_demo_plain"):
        scnet.create_model("scnet_demo_plain", num_classes=7, checkpoint_path=str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()  # the published digest, computed independently
    assert verify_sha256(path, digest.upper()) == digest and verify_sha256(path, digest[:8]) == digest


@pytest.mark.slow
def test_run_folder_scenarios_of_the_faults_table(tmp_path: Path) -> None:
    moved, conflict, concurrent, stale = faults.run_folders(tmp_path)
    assert moved.exit_code == 0 and "to epoch 2; the original folder made again: False" in moved.reaction
    assert conflict.exit_code == 2 and "--lr 0.5 contradicts the resumed run" in conflict.message and "untouched: True" in conflict.reaction
    assert concurrent.exit_code == 2 and "is in use by another run" in concurrent.message and "only its files: True" in concurrent.reaction
    assert stale.exit_code == 0 and "no longer running" in stale.message


@pytest.mark.slow
def test_bounded_input_scenarios_of_the_faults_table(tmp_path: Path) -> None:
    *refused, deep = faults.bounded_input(tmp_path)
    assert all(r.exit_code == 2 and _one_line(r.message) for r in refused), [(r.fault, r.message) for r in refused]
    assert "100000x1 px" in refused[0].message and "100000x1 px" in refused[1].message
    assert "declares more pixels" in refused[2].message and "more than 10,000 values" in refused[3].message
    assert deep.details["white"] < 0.01 and deep.details["clipped"] > 0.9


@pytest.mark.slow
def test_an_export_that_fails_to_write_is_one_line_and_leaves_nothing(tmp_path: Path, reference) -> None:
    # ONNX only: TorchScript's C++ writer aborts the whole process on a failed write (torch's, not ours to catch).
    out = tmp_path / "model.onnx"
    code, message = faults.run_limited(["export", "--checkpoint", str(reference[1] / "checkpoint-last.pth"), "--format", "onnx",
                                        "--out", str(out)], file_bytes=64 << 10)
    assert code == 1 and _one_line(message) and f"could not write {out}" in message and "no earlier file existed" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_read_back_scenarios_of_the_faults_table(tmp_path: Path) -> None:
    records = {r.fault: r for r in faults.read_back(tmp_path)}
    chunks = [r for f, r in records.items() if f.startswith("a Pathfinder cache chunk")]
    assert len(chunks) == 4 and all(r.exit_code == 0 and r.reaction.endswith("a fresh cache: True") for r in chunks), chunks
    refused = [r for r in records.values() if r.reaction.startswith("refused")]
    assert len(refused) == 4 + 3 + 1 + 4 + 4 + 3
    assert all(r.exit_code == 2 and _one_line(r.message) for r in refused), \
        [(r.fault, r.message) for r in refused if r.exit_code != 2]
    assert records["a study's compare-run.json with final_val_acc 250.0"].message.count("is not a percentage") == 1
    assert records["a float TIFF (mode F) with values in [0, 1]"].details["mean"] > 100
    orphans = next(r for f, r in records.items() if f.startswith("SIGKILL to scnet train"))
    assert orphans.details["workers"] >= 2 and orphans.details["left"] == 0
