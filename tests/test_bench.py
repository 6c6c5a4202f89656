"""``scnet bench``: the report's structure and the targets' arithmetic (timings themselves are not asserted)."""
import json
import sys
from pathlib import Path

import pytest
import torch

from scnet.bench import BenchCase, Rounds, grid, run_bench, write_report
from scnet.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench_targets import compare_runs, evaluate_targets  # noqa: E402  (the project's targets live beside the benchmark scripts)


def test_grid_and_bad_arguments() -> None:
    cases = grid(["scnet_demo"], ["eager", "deploy"], [1, 4], [32], baseline="resnet18")
    assert [(c.model, c.mode, c.batch) for c in cases] == [
        ("resnet18", "eager", 1), ("resnet18", "eager", 4), ("scnet_demo", "eager", 1), ("scnet_demo", "eager", 4),
        ("scnet_demo", "deploy", 1), ("scnet_demo", "deploy", 4)]  # deploy does not apply to the baseline
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        grid(["scnet50"], ["fast"], [1], [224])
    with pytest.raises(ValueError, match="batch size must be an integer from 1 to 4,096, got 0"):
        grid(["scnet50"], ["eager"], [0], [224])
    with pytest.raises(ValueError, match="repeats and warmup"):
        run_bench(cases, Rounds(repeats=0))


@pytest.mark.slow
def test_bench_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench"
    assert main(["bench", "--models", "scnet_demo", "--modes", "eager", "deploy", "train_cl", "--batch-sizes", "2", "3",
                 "--sizes", "32", "48", "--baseline", "resnet18", "--repeats", "2", "--warmup", "1", "--no-memory", "--keep-freed-memory", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["freed_memory_kept"] is (sys.platform == "linux")
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
    assert ("glibc keeping freed memory" in md) is report["freed_memory_kept"]
    assert "## Beside resnet18" in md and "| scnet_demo | train_cl | 2 | 32 |" in md.split("## All rows")[0]
    assert (out / "bench.png").stat().st_size > 10_000


def test_each_timed_call_follows_settling_calls_of_the_same_case() -> None:
    from scnet.bench.timing import _time_rounds

    log: list = []
    cases = [BenchCase("a", "eager", 1, 32), BenchCase("b", "eager", 1, 32)]
    calls = {id(c): ((lambda x, y, name=c.model: log.append(name)), None, None) for c in cases}

    class Bar:
        def update(self, n: int = 1) -> None:
            pass

    _time_rounds(cases, calls, repeats=2, dev=torch.device("cpu"), bar=Bar(), settle=2)
    assert log == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3  # settle + 1 timed, round-robin
    assert [len(c.times) for c in cases] == [2, 2]
    with pytest.raises(ValueError, match="settle must be >= 0, got -1"):
        run_bench(cases, Rounds(settle=-1))


def test_models_are_reported_beside_the_baseline() -> None:
    from scnet.bench.report import _side_by_side

    def row(model, mode, ips, roof, mem, error=None):
        return dict(model=model, mode=mode, batch=8, size=224, images_per_s=ips, roof_fraction=roof, peak_mem_mb=mem, error=error)

    rows = [row("resnet50", "train_cl", 12.0, 1.26, 1000.0), row("scnet50", "train_cl", 10.8, 1.09, 1100.0),
            row("scnet50", "deploy", 50.0, 1.7, None),  # no baseline row in this mode: not paired
            row("resnet50", "eager_cl", 50.0, 1.7, None), row("scnet50", "eager_cl", 1.0, 0.1, None, error="boom")]
    lines = _side_by_side(rows, "resnet50")
    body = [line for line in lines if line.startswith("| scnet50")]
    assert body == ["| scnet50 | train_cl | 8 | 224 | 10.80 / 12.00 | 0.90x | 109% / 126% | 1100 / 1000 | 1.10x |"]
    assert _side_by_side(rows, "resnet18") == []


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


def test_two_code_versions_are_compared_beyond_their_noise(tmp_path: Path) -> None:
    """Deploy vs eager at batch 1 (a min target): old 1.60/1.70, new 1.40/1.45. Noise is the larger spread (0.10),
    the medians differ by -0.225: worse. At batch 8 old 1.30/1.40, new 1.32/1.36: -0.01 is within 0.10: not worse.
    Latency growth (a max target) rises from 3.0 to 3.05: within its noise, not worse."""
    def report(b1: float, b8: float, growth: float) -> dict:
        rows = [dict(model="scnet50", mode="eager", batch=b, size=224, images_per_s=10.0) for b in (1, 8)]
        rows += [dict(model="scnet50", mode="deploy", batch=1, size=224, images_per_s=10.0 * b1, latency_ms=100.0 / b1),
                 dict(model="scnet50", mode="deploy", batch=8, size=224, images_per_s=10.0 * b8),
                 dict(model="scnet50", mode="deploy", batch=1, size=448, images_per_s=10.0 * b1 / growth,
                      latency_ms=100.0 / b1 * growth)]
        return dict(results=rows)

    groups = {"old": [report(1.60, 1.30, 3.0), report(1.70, 1.40, 3.0)],
              "new": [report(1.40, 1.32, 3.1), report(1.45, 1.36, 3.0)]}
    rows = {r["goal"]: r for r in compare_runs(groups)}
    b1 = rows["deploy(scnet50) vs scnet50 eager, batch 1"]
    assert b1["old"]["median"] == pytest.approx(1.65) and b1["new"]["median"] == pytest.approx(1.425)
    assert b1["noise"] == pytest.approx(0.10) and b1["worse_beyond_noise"] is True
    assert rows["deploy(scnet50) vs scnet50 eager, batch 8"]["worse_beyond_noise"] is False
    growth = rows["deploy(scnet50) latency growth 224 -> 448 px, batch 1"]
    assert growth["new"]["median"] == pytest.approx(3.05) and growth["worse_beyond_noise"] is False
    assert rows["scnet50 training step vs resnet50's, both channels_last, batch 8"]["worse_beyond_noise"] is None  # not measured
    with pytest.raises(ValueError, match="two labelled groups"):
        compare_runs({"old": groups["old"]})


def test_cpu_peak_memory_is_measured_in_a_fresh_process() -> None:
    from scnet.bench import cpu_peak_memory

    infer = cpu_peak_memory(BenchCase("scnet_demo", "eager", 16, 64), "fp32")
    train = cpu_peak_memory(BenchCase("scnet_demo", "train", 16, 64), "fp32")
    # A training step keeps activations for backward, gradients and momentum: more than inference needs.
    assert infer is not None and train is not None and train > infer >= 0
    # The demo model's gradients plus momentum alone are 2 x 4 bytes x ~0.5M parameters = ~4 MB.
    assert train > 4.0


def test_graph_modes_need_a_gpu() -> None:
    import torch

    import scnet

    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        scnet.cuda_graph(torch.nn.Identity(), torch.zeros(1))
    cases = grid(["scnet_demo"], ["graph", "deploy_graph"], [1], [32], baseline=None)
    rows = run_bench(cases, Rounds(repeats=1, warmup=1), show_progress=False, memory=False)["results"]
    assert [r["mode"] for r in rows] == ["graph", "deploy_graph"]
    assert all("needs a CUDA tensor" in r["error"] and "images_per_s" not in r for r in rows)  # reported, not timed


def test_kernel_names_fall_into_categories() -> None:
    from scnet.bench import kernel_category

    # Kernel names as an H200's profiler recorded them (shortened), then CPU operator names.
    names = {
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1": "convolution",
        "void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816fprop_optimized_bf16_256x64_32x4_nhwc_align8>": "convolution",
        "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT": "convolution",
        "void at::native::batch_norm_transform_input_channels_last_kernel<c10::BFloat16, float, c10::BFloat16, 4>": "batch norm",
        "void at::native::vectorized_elementwise_kernel<8, at::native::CUDAFunctor_add<c10::BFloat16>>": "add",
        "void at::native::vectorized_elementwise_kernel<8, at::native::(anonymous namespace)::launch_clamp_scalar": "relu",
        "void at::native::(anonymous namespace)::CatArrayBatchedCopy_alignedK_contig<OpaqueType<2u>, unsigned int, 4>": "concat",
        "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)": "copy",
        "void at::native::(anonymous namespace)::upsample_nearest2d_nhwc_out_frame<c10::BFloat16>": "upsample",
        "_gate_product_kernel": "calibration gate (Triton)",
        "void at::native::(anonymous namespace)::max_pool_forward_nhwc<c10::BFloat16, int>": "other",
        "aten::mkldnn_convolution": "convolution", "mkldnn::_convolution_pointwise": "convolution",
        "aten::sigmoid_": "sigmoid", "aten::avg_pool2d": "average pool", "aten::native_batch_norm": "batch norm",
    }
    assert {n: kernel_category(n) for n in names} == names


def test_breakdown_accounts_for_all_the_time(tmp_path: Path) -> None:
    from scnet.bench import kernel_breakdown, write_breakdown

    rows = [kernel_breakdown(BenchCase(m, "eager", 2, 32), calls=1, warmup=1) for m in ("resnet18", "scnet_demo")]
    for r in rows:
        assert r["total_us_per_call"] > 0
        assert sum(c["us_per_call"] for c in r["categories"]) == pytest.approx(r["total_us_per_call"])
        assert sum(c["share"] for c in r["categories"]) == pytest.approx(1.0)
        assert r["categories"][0]["category"] in ("convolution", "batch norm")  # where a CNN's time goes
    plain, sc = ({c["category"] for c in r["categories"]} for r in rows)
    assert "sigmoid" in sc and "sigmoid" not in plain  # only the calibration gate has a sigmoid
    write_breakdown(rows, tmp_path)
    assert "| scnet_demo | eager | 2 | 32 |" in (tmp_path / "breakdown.md").read_text()
    assert len(json.loads((tmp_path / "breakdown.json").read_text())["rows"]) == 2


def test_torch_settings_are_restored_after_a_measurement() -> None:
    """bench changes process-wide flags only inside ``torch_settings``: cuDNN's search and inductor's freezing."""
    import torch
    import torch._inductor.config as inductor_config

    from scnet.bench import torch_settings

    before = torch.backends.cudnn.benchmark, inductor_config.freezing
    with torch_settings(torch.device("cuda"), freezing=True):  # sets flags only: no GPU is touched
        assert torch.backends.cudnn.benchmark is True and inductor_config.freezing is True
    assert (torch.backends.cudnn.benchmark, inductor_config.freezing) == before
    with pytest.raises(RuntimeError), torch_settings(torch.device("cuda"), freezing=True):
        raise RuntimeError("a failing case")
    assert (torch.backends.cudnn.benchmark, inductor_config.freezing) == before


def test_engine_table_rates_scnet_against_resnet_and_marks_the_fastest(tmp_path: Path) -> None:
    from bench_engines import ENGINES, engine_table, write

    speeds = {"eager_cl": 10.0, "deploy": 14.0, "compiled": 15.0, "onnx": 16.0, "openvino": 12.0, "int8": 30.0, "openvino_int8": 35.0}
    rows = [dict(model=m, mode=e, batch=8, size=224, images_per_s=v * (0.9 if m == "scnet50" else 1.0))
            for e, v in speeds.items() for m in ("scnet50", "scnet50_plain")]
    rows[0] = dict(rows[0], images_per_s=None, error="boom")  # scnet50 eager_cl failed
    rows.append(dict(model="resnet50", mode="eager_cl", batch=8, size=224, images_per_s=11.0))
    table = engine_table(rows)
    by = {r["engine"]: r for r in table["rows"]}
    assert by["onnx"]["ratio"] == pytest.approx(0.9) and by["eager_cl"]["ratio"] is None
    assert table["fastest"]["scnet50/8/float32"] == "onnx" and table["fastest"]["scnet50_plain/8/int8"] == "openvino_int8"
    assert table["errors"] == [dict(model="scnet50", mode="eager_cl", batch=8, error="boom")]
    write(tmp_path, dict(command="c", bench=dict(machine="m", repeats=1, warmup=1), table=table))
    md = (tmp_path / "engines.md").read_text()
    assert "| onnx | **14.4** | **16.0** | 0.90x |" in md and "| eager_cl | failed | 10.0 | - |" in md
    assert (tmp_path / "engines.png").stat().st_size > 0 and len(ENGINES) == 7


def test_engine_profiles_are_attributed_to_the_networks_parts() -> None:
    """Kernel names as the engines write them, given to parts through the exporter's module paths."""
    from bench_engines import attribute, groups, op_kind, part_of

    assert part_of(["", "layer2", "layer2.0", "layer2.0.k3", "conv"]) == "layer2.0"
    assert part_of(["", "conv1", "_conv"]) == "stem" and part_of(["", "fc", "linear"]) == "head"
    assert part_of(["_empty_nn_module_stack_from_metadata_hook", "sym_size"]) == "other"
    names = {"node_Conv_1": "stem", "relu_1": "layer1.0", "relu_10": "layer1.1", "getitem_3": "layer2.0", "output": "head"}
    kernels = [("node_Conv_1", "Conv", 1.0), ("relu_10_nchwc", "Conv", 2.0), ("relu_1_nchwc", "Conv", 0.5),  # ONNX Runtime's NCHWc forms
               ("getitem_3_QuantizeLinear", "QuantizeLinear", 0.25), ("input_abcd_acdb_node_Conv_1", "Reorder", 0.125),  # quantize's, OpenVINO's
               ("ReorderOutput_token_5", "ReorderOutput", 4.0), ("output", "FullyConnected", 8.0)]
    per_part = attribute(kernels, names)
    assert per_part == {"stem": 1.125, "layer1.1": 2.0, "layer1.0": 0.5, "layer2.0": 0.25, "reorders": 4.0, "head": 8.0}
    g = groups(per_part)
    assert g["first blocks (layer1.0, stride-2 layer2-4.0)"] == 0.75 and g["other blocks"] == 2.0
    assert sum(g.values()) == pytest.approx(sum(per_part.values()))
    assert [op_kind(op) for _, op, _ in kernels[3:]] == ["quantize / dequantize", "reorders, other", "reorders, other",
                                                         "convolutions and classifier"]
    assert op_kind("Interpolate") == op_kind("Resize") and op_kind("Subgraph") == op_kind("QLinearMul")


@pytest.mark.parametrize("args, message", [
    (["--sizes", "100000"], "every resolution must be an integer from 1 to 4,096, got 100000"),  # 120 GB of input
    (["--batch-sizes", "100000"], "every batch size must be an integer from 1 to 4,096, got 100000"),  # 60 GB
    (["--settle", "-1"], "settle must be >= 0, got -1"),
])
def test_bench_options_are_bounded(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    assert main(["bench", "--models", "scnet_demo", "--no-memory", "--out", str(tmp_path / "b"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("args, message", [
    (["bench", "--threads", "-1"], "argument --threads: must be from 1 to 4,096, got -1"),
    (["erf", "--input-size", "100000"], "argument --input-size: must be from 8 to 4,096, got 100,000"),
    (["erf", "--num-samples", "0"], "argument --num-samples: must be from 1 to 100,000, got 0"),
    (["erf", "--inits", "-2"], "argument --inits: must be from 1 to 1,000, got -2"),
    (["export", "--model", "scnet_demo", "--num-classes", "1000000000"], "argument --num-classes: must be from 1 to 1,000,000"),
    (["export", "--model", "scnet_demo", "--check-sizes", "100000x100000"], "each side must be from 1 to 4,096, got 100000x100000"),
    (["export", "--model", "scnet_demo", "--rtol", "nan"], "argument --rtol: must be a positive finite number, got nan"),
    (["cam", "x.png", "--class", "-1"], "argument --class: must be from 0 to 1,000,000, got -1"),
])
def test_every_commands_numbers_are_bounded(capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as done:
        main(args)
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err and "Traceback" not in err, err


def test_eval_numbers_are_bounded(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        main(["eval", "--checkpoint", "x.pth", "--workers", "-3"])
    assert done.value.code == 2 and "argument --workers: must be from 0 to 256, got -3" in capsys.readouterr().err
