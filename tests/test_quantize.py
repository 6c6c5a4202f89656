"""int8 inference: calibrated ONNX Runtime quantization stays close to float32, keeps in float what it is told to, and
refuses bad input with one clear error; the CLI and the benchmark reach it."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

import scnet
from scnet.cli import main
from scnet.data import build_datasets
from scnet.int8 import calibration_batches, calibration_branch_nodes, quantize


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of the demo SCNet trained by our tools on synthetic images (3 epochs of 256): its directory."""
    from scnet.train import fit, merge_config

    run = tmp_path_factory.mktemp("int8") / "run"
    fit(merge_config(flags=dict(data="synthetic", limit_train=256, limit_val=128, batch_size=32, epochs=3, out=str(run))),
        show_progress=False, log=lambda *a, **k: None)
    return run


@pytest.fixture(scope="module")
def model_and_data(trained: Path) -> tuple[torch.nn.Module, list[torch.Tensor], torch.Tensor]:
    """The trained model, calibration batches from its training images, and 128 validation images."""
    train, val, _ = build_datasets("synthetic", limit_train=256, limit_val=128, image_size=32)
    model = scnet.load_model(file=str(trained / "checkpoint-best.pth")).model
    return model.eval(), calibration_batches(train, 128, 64), calibration_batches(val, 128, 128)[0]


def _int8_ops(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Per op type in the ONNX graph: how many nodes read an int8 (dequantized) input, and how many have their
    output quantized to int8."""
    graph = onnx.load(str(path)).graph
    dequantized = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    reads: dict[str, int] = {}
    writes: dict[str, int] = {}
    for n in graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if any(i in dequantized for i in n.input):
            reads[n.op_type] = reads.get(n.op_type, 0) + 1
        if any(o in quantized for o in n.output):
            writes[n.op_type] = writes.get(n.op_type, 0) + 1
    return reads, writes


@pytest.mark.slow
def test_int8_follows_float32_and_keeps_what_it_is_told(model_and_data, tmp_path: Path) -> None:
    model, calib, x = model_and_data
    with torch.no_grad():
        ref = model(x)
    ops = {}
    for keep in ("none", "gate", "branch", "convs"):
        q = quantize(model, calib, path=tmp_path / f"{keep}.onnx", keep_fp32=keep)
        out = q(x)
        assert float((out - ref).norm() / ref.norm()) < 0.12, keep  # 0.08 measured with everything in int8
        assert float((out.argmax(1) == ref.argmax(1)).float().mean()) >= 0.95, keep  # 0.96-0.99 measured
        ops[keep] = _int8_ops(q.path)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert ops["none"][0]["Conv"] == ops["gate"][0]["Conv"] == ops["branch"][0]["Conv"] == ops["convs"][0]["Conv"] == convs  # every conv reads int8
    sc_layers = sum(isinstance(m, scnet.SelfCalibration) for m in model.modules())
    assert ops["none"][1]["Sigmoid"] == sc_layers  # the gate rounded to 8 bits
    assert "Sigmoid" not in ops["gate"][1] and ops["gate"][1]["Add"] > 0  # the gate in float, the rest in int8
    # The calibration branch in float: the upsampling, the sum and the sigmoid write float, the sigmoid reads float;
    # the residual sums (one per block, each block one SC layer) still write int8, and the pool and the product
    # only as the int8 input of the convolution that reads them (K2, K4).
    assert not {"Resize", "Sigmoid"} & set(ops["branch"][1]) and "Sigmoid" not in ops["branch"][0]
    assert ops["branch"][1]["Add"] == ops["none"][1]["Add"] - sc_layers == sc_layers
    # Only what feeds a convolution or the classifier is quantized: the sums, the upsample and the gate stay float.
    assert not {"Sigmoid", "Add", "Resize", "Concat"} & set(ops["convs"][1])


def _graph(nodes: list[tuple[str, str, list[str]]]) -> onnx.GraphProto:
    """A graph of (name, op, inputs) nodes, each writing the tensor of its own name; enough for a pattern search."""
    return onnx.helper.make_graph([onnx.helper.make_node(op, inputs, [name], name=name) for name, op, inputs in nodes],
                                  "g", [], [])


def test_the_calibration_branch_is_found_whole_and_only_whole() -> None:
    graph = _graph([
        # a block's branch as exported unfolded: pool, K2 and its norm, Up, + x, sigmoid, x K3
        ("pool", "AveragePool", ["x"]), ("k2", "Conv", ["pool", "w"]), ("bn", "BatchNormalization", ["k2"]),
        ("up", "Resize", ["bn", "", "", "sizes"]), ("sum", "Add", ["x", "up"]), ("sig", "Sigmoid", ["sum"]),
        ("k3", "Conv", ["x", "w3"]), ("gated", "Mul", ["k3", "sig"]),
        # folded, and the pooled map already the features' size (no Up)
        ("pool1", "AveragePool", ["y"]), ("k2b", "Conv", ["pool1", "w"]), ("sum1", "Add", ["y", "k2b"]),
        ("sig1", "Sigmoid", ["sum1"]), ("gated1", "Mul", ["k3", "sig1"]),
        # an avd pool followed by a convolution and a residual sum: not a branch
        ("avd", "AveragePool", ["gated"]), ("c", "Conv", ["avd", "w"]), ("res", "Add", ["c", "x"]), ("r", "Relu", ["res"]),
    ])
    assert calibration_branch_nodes(graph) == ["pool", "up", "sum", "sig", "gated", "pool1", "sum1", "sig1", "gated1"]


def test_bad_input_is_one_clear_error(model_and_data) -> None:
    model, calib, _ = model_and_data
    with pytest.raises(ValueError, match="quantize needs a model in eval mode"):
        quantize(model.train(), calib)
    model.eval()
    with pytest.raises(ValueError, match=r"calibration batch 1 expects 1 input channels, got 3 .*the model takes 1-channel images"):
        quantize(model, [calib[0], torch.randn(4, 3, 32, 32)])
    with pytest.raises(ValueError, match=r"calibration batch 0 expects a 4-D \(N, C, H, W\) tensor, got a 3-D tensor"):
        quantize(model, [torch.randn(1, 32, 32)])
    with pytest.raises(TypeError, match="calibration batch 0 must be a tensor"):
        quantize(model, [calib[0].numpy()])
    with pytest.raises(ValueError, match="at least one calibration batch"):
        quantize(model, [])
    with pytest.raises(ValueError, match="keep_fp32 must be one of"):
        quantize(model, calib, keep_fp32="sigmoid")


@pytest.mark.slow
def test_cli_exports_int8_calibrated_on_the_checkpoints_data(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = trained
    out = tmp_path / "model-int8.onnx"
    assert main(["export", "--checkpoint", str(run / "checkpoint-best.pth"), "--int8", "--calibration-images", "64", "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert out.is_file() and "int8 ONNX (kept in float: none), calibrated on 64 synthetic images" in line and "top-1 agreement" in line
    assert main(["export", "--checkpoint", str(run / "checkpoint-best.pth"), "--int8", "--format", "torchscript", "--out", str(out)]) == 2
    assert "--int8 writes ONNX" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_times_onnx_runtime_and_int8_beside_the_torch_paths() -> None:
    from scnet.bench import Rounds, grid, run_bench

    report = run_bench(grid(["resnet18"], ["deploy", "onnx", "int8", "int8_gate"], [2], [32], baseline=None), Rounds(1, 1, 0),
                       show_progress=False, memory=False)
    assert [r["mode"] for r in report["results"]] == ["deploy", "onnx", "int8", "int8_gate"]
    assert all(r["error"] is None and r["images_per_s"] > 0 for r in report["results"])


def test_an_onnx_bench_case_lets_its_torch_model_go_once_its_file_is_made() -> None:
    """A table of many ONNX cases is held in memory at once; each keeps its engine, not the torch model as well."""
    import gc
    import weakref

    from scnet.bench.cases import _onnx_runner, make_inputs

    model = scnet.create_model("scnet_demo", num_classes=10).eval()
    alive = weakref.ref(model)
    run = _onnx_runner(model, "scnet_demo-held", "fp32", "onnxruntime", torch.device("cpu"), torch.float32)
    del model
    gc.collect()
    assert alive() is not None  # the first call still has to export it
    run(*make_inputs(1, 32, False, torch.device("cpu")))
    gc.collect()
    assert alive() is None


def test_logit_fidelity_and_top2_margins_restated() -> None:
    """Agreement, relative error and margins on hand-made logits whose answers are known without the library."""
    from scnet.int8 import logit_fidelity, top2_margins

    ref = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5], [1.0, 0.0, 4.0], [2.0, 2.5, 0.0]])
    out = ref.clone()
    out[1] += torch.tensor([0.2, -0.2, 0.0])  # image 1: top class 1 stays (1.8 against 1.5)
    out[3] += torch.tensor([0.6, 0.0, 0.0])  # image 3: 2.6 > 2.5, the top class flips from 1 to 0
    fid = logit_fidelity(ref, out)
    assert fid["images"] == 4 and fid["top1_agreement"] == pytest.approx(75.0)
    diff = (0.2 ** 2 * 2 + 0.6 ** 2) ** 0.5
    assert fid["rel_error"] == pytest.approx(diff / float(ref.pow(2).sum().sqrt()), rel=1e-6)

    m = top2_margins(ref, out)
    assert m["margin"].tolist() == pytest.approx([2.0, 0.5, 3.0, 0.5])
    rms = [0.0, (0.08 / 3) ** 0.5, 0.0, (0.36 / 3) ** 0.5]
    assert m["change_rms"].tolist() == pytest.approx(rms, abs=1e-6)
    assert float(m["ratio"][1]) == pytest.approx(0.5 / rms[1], rel=1e-5)
    assert float(m["ratio"][3]) < float(m["ratio"][1])  # the flipped image had the smaller margin per unit of change
    with pytest.raises(ValueError, match=r"\(4, 3\) and \(4, 2\)"):
        logit_fidelity(ref, out[:, :2])
    with pytest.raises(ValueError, match="classes >= 2"):
        top2_margins(ref[:, :1], out[:, :1])


def test_int8_export_names_the_calibration_setting_when_the_data_is_missing(tmp_path) -> None:
    import scnet
    from scnet.int8 import export_int8

    loaded = scnet.load_model("scnet_demo")
    with pytest.raises(ValueError, match="'no_such_set' gave none .* give calibration_data NAME \\(and data_dir DIR\\)"):
        export_int8(loaded, tmp_path / "m.onnx", data="no_such_set")
    assert not (tmp_path / "m.onnx").exists()
