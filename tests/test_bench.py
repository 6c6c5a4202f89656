"""``scnet bench``: the report's structure and the targets' arithmetic (timings themselves are not asserted)."""
import json
from pathlib import Path

import pytest

from scnet.bench import BenchCase, evaluate_targets, grid, run_bench, write_report
from scnet.cli import main


def test_grid_and_bad_arguments() -> None:
    cases = grid(["scnet_demo"], ["eager", "deploy"], [1, 4], [32], baseline="resnet18")
    assert [(c.model, c.mode, c.batch) for c in cases] == [
        ("resnet18", "eager", 1), ("resnet18", "eager", 4), ("scnet_demo", "eager", 1), ("scnet_demo", "eager", 4),
        ("scnet_demo", "deploy", 1), ("scnet_demo", "deploy", 4)]  # deploy does not apply to the baseline
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        grid(["scnet50"], ["fast"], [1], [224])
    with pytest.raises(ValueError, match="batch size must be >= 1, got 0"):
        grid(["scnet50"], ["eager"], [0], [224])
    with pytest.raises(ValueError, match="repeats and warmup"):
        run_bench(cases, repeats=0)


def test_bench_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench"
    assert main(["bench", "--models", "scnet_demo", "--modes", "eager", "deploy", "train_cl", "--batch-sizes", "2", "3",
                 "--sizes", "32", "48", "--baseline", "resnet18", "--repeats", "2", "--warmup", "1", "--no-memory", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    rows = report["results"]
    assert len(rows) == 2 * 2 * (2 + 3)  # batches x sizes x (baseline: eager, train_cl; scnet_demo: all three)
    assert report["matmul_roof_gflops"] > 0 and "torch threads" in report["machine"]
    for r in rows:
        assert r["error"] is None and r["repeats"] == 2
        assert r["images_per_s"] == pytest.approx(r["batch"] / (r["latency_ms"] / 1e3))
        factor = 3 if r["train"] else 1
        assert r["gflops"] == pytest.approx(2 * factor * r["macs_per_image"] * r["batch"] / (r["latency_ms"] / 1e3) / 1e9)
    md = (out / "bench.md").read_text()
    assert "| scnet_demo | deploy | 3 | 48 |" in md and "deploy = inference + channels_last + deploy(backend=auto)" in md
    assert (out / "bench.png").stat().st_size > 10_000


def test_targets_are_rated_from_the_rows() -> None:
    def row(model, mode, batch, size, ips, mem=None):
        return dict(model=model, mode=mode, batch=batch, size=size, images_per_s=ips, latency_ms=1e3 * batch / ips, peak_mem_mb=mem)

    report = dict(results=[
        row("scnet50", "eager", 1, 224, 10.0), row("scnet50", "deploy", 1, 224, 16.0),  # 1.6x >= 1.5: met
        row("scnet50", "eager", 8, 224, 10.0), row("scnet50", "deploy", 8, 224, 12.0),  # 1.2x < 1.3: not met
        row("scnet50", "deploy", 1, 448, 3.0),  # latency 333 ms vs 62.5 ms: 5.3x > 4.3: not met
        row("scnet50", "train_cl", 8, 224, 4.0, mem=900.0), row("resnet50", "train_cl", 8, 224, 4.0, mem=1000.0),
    ])
    rated = {t["goal"]: t for t in evaluate_targets(report)}
    assert rated["deploy(scnet50) vs scnet50 eager, batch 1"]["met"] is True
    assert rated["deploy(scnet50) vs scnet50 eager, batch 1"]["ratio"] == pytest.approx(1.6)
    assert rated["deploy(scnet50) vs scnet50 eager, batch 8"]["met"] is False
    growth = rated["deploy(scnet50) latency growth 224 -> 448 px, batch 1"]
    assert growth["ratio"] == pytest.approx((1 / 3.0) / (1 / 16.0)) and growth["met"] is False
    assert rated["scnet50 training peak memory / resnet50's (same mode, channels_last), batch 8"]["met"] is True
    assert rated["compiled deploy(scnet50) vs compiled resnet50 (inductor, freezing, channels_last), batch 8"]["met"] is None


def test_cpu_peak_memory_is_measured_in_a_fresh_process() -> None:
    from scnet.bench import cpu_peak_memory

    infer = cpu_peak_memory(BenchCase("scnet_demo", "eager", 16, 64), "fp32")
    train = cpu_peak_memory(BenchCase("scnet_demo", "train", 16, 64), "fp32")
    # A training step keeps activations for backward, gradients and momentum: more than inference needs.
    assert infer is not None and train is not None and train > infer >= 0
    # The demo model's gradients plus momentum alone are 2 x 4 bytes x ~0.5M parameters = ~4 MB.
    assert train > 4.0
