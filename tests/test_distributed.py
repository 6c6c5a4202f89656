"""Multi-process training, proven: two hosts train what one host trains, a killed worker is restarted and the run
resumes by itself, and when one process fails every process stops promptly, naming it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dist_runs as mp
from scnet.data import FASHION_MNIST_SYSTEM_DIR
from scnet.files import read_checkpoint
from scnet.train import peers

EPOCHS = ["--epochs", "2"]
RUN_FILES = ["checkpoint-best.pth", "checkpoint-last.pth", "config.yaml", "curves.png", "log.csv", "metrics.json", "tensorboard",
             "weights-best.safetensors"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The uninterrupted 2-process run on one host, one thread a process."""
    out = tmp_path_factory.mktemp("reference") / "run"
    return out, mp.two_process_reference(out, EPOCHS)


@pytest.mark.slow
def test_two_hosts_train_what_one_host_trains(tmp_path: Path, reference: tuple[Path, dict]) -> None:
    # Two network namespaces joined by a veth pair, one torchrun each, c10d rendezvous on host 0's address. Host 1
    # sees the shared folder read-only (checked before it starts): only rank 0 may write the run directory.
    shared = tmp_path / "shared"
    shared.mkdir()
    try:
        with mp.TwoHosts() as hosts:
            host0, host1 = hosts.torchrun([*mp.ARGS, *EPOCHS, "--out", str(shared / "run")], read_only=shared)
    except mp.HostsUnavailable as e:
        pytest.skip(f"cannot make network namespaces here (needs root and ip netns): {e}")
    assert host0.returncode == 0 and host1.returncode == 0, (host0.stderr[-3000:], host1.stderr[-3000:])
    assert "on 2 processes" in host0.stdout and not host1.stdout.strip()  # host 0 holds rank 0, which alone reports
    ref_dir, ref = reference
    two_hosts = read_checkpoint(shared / "run" / "checkpoint-last.pth")
    assert mp.same_weights(ref, two_hosts, rtol=1e-6, atol=1e-7)
    assert mp.logged_metrics(shared / "run") == mp.logged_metrics(ref_dir)
    assert sorted(p.name for p in (shared / "run").iterdir()) == RUN_FILES


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_run_resumes_by_itself(tmp_path: Path, reference: tuple[Path, dict]) -> None:
    # SIGKILL rank 1 after step 3 of 8 (a checkpoint every 2 steps: the last complete one is mid-epoch, at step 2).
    out = tmp_path / "run"
    done = mp.torchrun([*mp.ARGS, *EPOCHS, "--checkpoint-every", "2", "--out", str(out)],
                       ["--standalone", "--nproc_per_node", "2", "--max-restarts", "1"], fault=("kill", 1, "3"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FAULT kill" in done.stderr and "torchrun restart 1: continuing this job's last checkpoint" in done.stdout
    assert f"resuming {out / 'checkpoint-last.pth'} at epoch 1, step 2" in done.stdout
    ref_dir, ref = reference
    assert mp.same_weights(ref, read_checkpoint(out / "checkpoint-last.pth"))  # exactly
    assert mp.logged_metrics(out) == mp.logged_metrics(ref_dir)


@pytest.mark.slow
def test_a_fresh_start_under_torchrun_still_refuses_another_run(tmp_path: Path, reference: tuple[Path, dict]) -> None:
    # A restart continues only this job's own checkpoint: a first attempt over a finished run is refused as ever,
    # and so is its restart (another job's checkpoint), until no restarts are left.
    ref_dir, _ = reference
    done = mp.torchrun([*mp.ARGS, *EPOCHS, "--out", str(ref_dir)], ["--standalone", "--nproc_per_node", "2", "--max-restarts", "1"])
    assert done.returncode != 0
    assert done.stderr.count(f"scnet train: error: rank 0: {ref_dir} already holds a finished run") == 2


@pytest.fixture(scope="module")
def fashion_truncated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from faults import truncated_fashion_mnist

    return truncated_fashion_mnist(tmp_path_factory.mktemp("fashion-truncated"))


FAULTS = {  # kind, rank, where; the message the other process prints names the failed rank and the cause
    "unreadable data on rank 1": (("data", 1, "FASHION"), "rank 1 failed: ", "is truncated or not Fashion-MNIST"),
    "RuntimeError raised on rank 1": (("raise", 1, "3"), "rank 1 failed: RuntimeError: injected failure after step 3", ""),
    "NaN loss on rank 1 only": (("nan", 1, "3"), "rank 1 failed: non-finite loss nan at epoch 1, step 3", ""),
    "rank 1 killed": (("kill", 1, "3"), "rank 1 stopped answering: killed, or its machine or network failed", ""),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAULTS))
def test_one_failed_process_stops_every_process_promptly(tmp_path: Path, name: str, fashion_truncated: Path) -> None:
    # Started by hand (no torchrun to tear the group down): every process must end by itself, non-zero, each with
    # one line naming the failed rank. A long collective timeout shows the exit does not wait for it.
    (kind, rank, at), expected, detail = FAULTS[name]
    data = ["--data", "fashion_mnist", "--data-dir", str(FASHION_MNIST_SYSTEM_DIR)] if kind == "data" else []
    if kind == "data" and not Path(FASHION_MNIST_SYSTEM_DIR).is_dir():
        pytest.skip("Fashion-MNIST is not installed (make data)")
    at = str(fashion_truncated) if kind == "data" else at
    ranks = mp.by_hand(tmp_path, [*mp.ARGS, *data, *EPOCHS, "--dist-timeout", "300", "--out", str(tmp_path / "run")], (kind, rank, at))
    assert all(code not in (0, None) for code in ranks.codes), (ranks.codes, ranks.stderr)
    assert max(ranks.seconds) < 30, ranks.seconds
    own, other = ranks.last_lines()[1], ranks.last_lines()[0]
    assert other.startswith(f"scnet train: error: rank 0 stopped: {expected}") and detail in other, other
    if kind != "kill":
        assert own.startswith("scnet train: error: rank 1: ") and detail in own, own


@pytest.mark.slow
def test_a_process_that_stops_answering_ends_the_run_after_the_collective_timeout(tmp_path: Path) -> None:
    # Rank 1 hangs (sleeps) after step 3; under torchrun rank 0's collective times out after --dist-timeout 10 s,
    # rank 0 names rank 1 and exits, and torchrun then ends the sleeper.
    done = mp.torchrun([*mp.ARGS, *EPOCHS, "--dist-timeout", "10", "--out", str(tmp_path / "run")],
                       ["--standalone", "--nproc_per_node", "2"], fault=("hang", 1, "3"), timeout=120)
    assert done.returncode != 0
    assert ("scnet train: error: rank 0 stopped: rank 1 did not answer within the collective timeout (10 s, --dist-timeout)"
            in done.stderr), done.stderr[-3000:]


def test_the_census_names_the_rank_that_failed_or_vanished(monkeypatch: pytest.MonkeyPatch) -> None:
    # The diagnosis on its own, over an in-process store: three ranks, seen from rank 0.
    monkeypatch.setattr(peers, "GRACE_S", 0.3)
    broken = RuntimeError("[gloo/transport/tcp/pair.cc] Connection closed by peer [10.0.0.2]:1234")
    timed_out = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc] Timed out waiting 10000ms for recv operation")
    store = torch.distributed.HashStore()
    assert peers._diagnose(store, 0, 3, ValueError("bad --lr"), 60) is None  # its own error, nobody else failed
    store.set("scnet/alive/1", "1")
    assert peers._diagnose(store, 0, 3, broken, 60) == "rank 2 stopped answering: killed, or its machine or network failed"
    assert peers._diagnose(store, 0, 3, timed_out, 60) == "rank 2 did not answer within the collective timeout (60 s, {dist_timeout})"
    store.set("scnet/alive/2", "1")
    assert peers._diagnose(store, 0, 3, broken, 60) is None  # everyone answers: the communication error is its own
    store.set("scnet/failed/2", "truncated data")
    assert peers._diagnose(store, 0, 3, broken, 60) == "rank 2 failed: truncated data"
    assert peers._diagnose(store, 0, 3, ValueError("disk full"), 60) is None  # its own error, whatever the others hit


def test_one_line_keeps_user_errors_plain_and_names_the_others() -> None:
    assert peers.one_line(ValueError("--lr must be > 0,\n got -1")) == "--lr must be > 0, got -1"
    assert peers.one_line(RuntimeError("CUDA out of memory")) == "RuntimeError: CUDA out of memory"
    assert len(peers.one_line(RuntimeError("x" * 1000))) == 400


def test_a_restart_continues_only_this_jobs_own_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scnet.train import fit, merge_config
    from scnet.train.resume import restart_checkpoint as _restart_checkpoint

    flags = dict(model="scnet_demo", data="synthetic", limit_train=64, batch_size=32, epochs=1, out=str(tmp_path / "run"))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    fit(merge_config(flags=flags), show_progress=False, log=lambda *a, **k: None)
    last = tmp_path / "run" / "checkpoint-last.pth"
    assert read_checkpoint(last)["job"] == "job-a"
    assert _restart_checkpoint(merge_config(flags=flags)) is None  # a first attempt: no restart count
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert _restart_checkpoint(merge_config(flags=flags))[0] == last
    assert _restart_checkpoint(merge_config(flags={**flags, "dist_timeout": 30.0}))[0] == last  # a launch setting
    assert _restart_checkpoint(merge_config(flags={**flags, "seed": 1})) is None  # another run's configuration
    assert _restart_checkpoint(merge_config(flags={**flags, "out": str(tmp_path / "elsewhere")})) is None  # no checkpoint there
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
    assert _restart_checkpoint(merge_config(flags=flags)) is None  # another job's run
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's default id, shared by every job without --rdzv-id
    assert _restart_checkpoint(merge_config(flags=flags)) is None
