"""The inference engines: each float32 engine gives eager PyTorch's outputs, a diverging export is refused on the
first batch, OpenVINO runs the int8 file in int8, and eval, predict and the benchmark reach every engine."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

import scnet
from scnet.cli import main
from scnet.engines import ENGINES, EngineMismatch, EngineModel, relative_error
from scnet.int8 import quantize
from seeded import seeded_input


@pytest.fixture(scope="module")
def demo() -> nn.Module:
    torch.manual_seed(0)
    return scnet.create_model("scnet_demo", num_classes=10, in_chans=1).eval()


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_gives_eager_outputs(demo: nn.Module, engine: str) -> None:
    x, later = seeded_input((3, 1, 32, 32), seed=1), seeded_input((5, 1, 40, 36), seed=2)  # another batch and size next
    run = EngineModel(demo, engine, threads=1)
    with torch.no_grad():
        for batch in (x, later):
            # Re-stated: ||out - ref|| / ||ref||, float rounding only (1e-6 measured for the ONNX engines).
            out, ref = run(batch), demo(batch)
            assert out.shape == ref.shape
            assert float((out - ref).norm() / ref.norm()) < 1e-5, engine
    assert run.first_error is not None and run.first_error < 1e-5


class _ExportDiffers(nn.Module):
    """Adds 1 to its output while being exported: an ONNX file that no longer computes the eager model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean((2, 3))
        return y + 1 if torch.onnx.is_in_onnx_export() else y


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_an_engine_that_disagrees_with_eager_is_refused(engine: str) -> None:
    run = EngineModel(_ExportDiffers().eval(), engine)
    with pytest.raises(EngineMismatch, match=f"{engine} gives other outputs than eager PyTorch"):
        run(seeded_input((2, 1, 16, 16), seed=3))


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_inputs_below_the_export_size_are_refused(demo: nn.Module, engine: str) -> None:
    from scnet.export import min_export_size

    side = min_export_size(demo, 1)
    assert side == 26  # scnet_demo: its calibrated maps are 13, 13, 7 and 4 px at 26 px; at 25 the last is 3 < r = 4
    run = EngineModel(demo, engine)
    with pytest.raises(ValueError, match=f"at least {side} px a side; got 25x40"):
        run(seeded_input((1, 1, 25, 40), seed=7))
    run(seeded_input((1, 1, side, side), seed=7))
    with pytest.raises(ValueError, match=f"at least {side} px a side; got 30x16"):
        run(seeded_input((1, 1, 30, 16), seed=7))  # a later, smaller batch too


def test_engine_model_refuses_bad_settings(demo: nn.Module) -> None:
    with pytest.raises(ValueError, match="engine must be one of .* got 'tensorrt'"):
        EngineModel(demo, "tensorrt")
    with pytest.raises(ValueError, match="eval mode"):
        EngineModel(scnet.create_model("scnet_demo", num_classes=10, in_chans=1).train(), "onnxruntime")
    with pytest.raises(ValueError, match="inference only"):
        EngineModel(demo, "deploy").train()


def test_openvino_runs_the_int8_file_in_int8(demo: nn.Module) -> None:
    calib = [seeded_input((16, 1, 32, 32), seed=s) for s in (4, 5)]
    x = seeded_input((8, 1, 32, 32), seed=6)
    with torch.no_grad():
        ref = demo(x)
    by_ort = quantize(demo, calib, threads=1)
    by_openvino = quantize(demo, calib, threads=1, engine="openvino")
    ort_err, ov_err = relative_error(by_ort(x), ref), relative_error(by_openvino(x), ref)
    assert 1e-3 < ov_err < 0.1  # int8 rounding, not float32's (1e-6), and still the same network
    assert 1e-3 < ort_err < 0.1
    assert relative_error(by_openvino(x), by_ort(x)) < 0.1  # the same int8 file, two engines


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of the demo SCNet trained for one epoch on an image folder at 32 px (the ONNX engines need 26 px or more;
    the synthetic set is 16 px): its directory, the data beside it in ``data``."""
    import numpy as np
    from PIL import Image

    from scnet.train import fit, merge_config

    root = tmp_path_factory.mktemp("engines")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / "data" / split / cls).mkdir(parents=True)
            for i in range(8):
                Image.fromarray(rng.integers(0, 255, (45, 70, 3), dtype=np.uint8)).save(root / "data" / split / cls / f"{i}.png")
    fit(merge_config(flags=dict(data="imagefolder", data_dir=str(root / "data"), image_size=32, epochs=1, batch_size=8,
                                out=str(root / "run"))), show_progress=False, log=lambda *a, **k: None)
    return root / "run"


@pytest.mark.slow
def test_eval_on_each_engine_gives_the_torch_accuracy(run: Path, capsys: pytest.CaptureFixture) -> None:
    from scnet.train import evaluate_checkpoint

    checkpoint = str(run / "checkpoint-last.pth")
    by_torch = evaluate_checkpoint(checkpoint)
    for engine in ("deploy", "onnxruntime", "openvino"):
        other = evaluate_checkpoint(checkpoint, engine=engine)
        assert other["engine"] == engine and other["count"] == by_torch["count"] == 16
        assert other["acc"] == by_torch["acc"] and other["loss"] == pytest.approx(by_torch["loss"], rel=1e-5)
    assert main(["eval", "--checkpoint", checkpoint, "--engine", "openvino"]) == 0
    assert f"run by openvino on imagefolder: top-1 {by_torch['acc']:.2f}%" in capsys.readouterr().out


def test_predict_on_an_engine_gives_the_torch_probabilities(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i in range(3):
        images.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(images[-1])
    outputs = {}
    for engine in ("torch", "onnxruntime"):
        assert main(["predict", *images, "--checkpoint", str(run / "checkpoint-last.pth"), "--format", "json",
                     "--topk", "2", "--engine", engine]) == 0
        outputs[engine] = json.loads(capsys.readouterr().out)
    for a, b in zip(outputs["torch"], outputs["onnxruntime"]):
        assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
        assert [t["prob"] for t in a["top"]] == pytest.approx([t["prob"] for t in b["top"]], abs=1e-5)


@pytest.mark.slow
def test_bench_times_openvino_beside_onnx_runtime() -> None:
    from scnet.bench import Rounds, grid, run_bench

    report = run_bench(grid(["resnet18"], ["onnx", "openvino", "openvino_int8"], [2], [32], baseline=None), Rounds(1, 1, 0),
                       show_progress=False, memory=False)
    assert [r["mode"] for r in report["results"]] == ["onnx", "openvino", "openvino_int8"]
    assert all(r["error"] is None and r["images_per_s"] > 0 for r in report["results"])


def test_a_missing_engine_package_is_named_before_any_export(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import scnet
    from scnet.engines import EngineModel

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else found(name, *a))
    with pytest.raises(ImportError, match="engine openvino needs the openvino package: pip install openvino"):
        EngineModel(scnet.create_model("scnet_demo").eval(), "openvino")


_SIGNAL_AFTER_TWO_ENGINES = """
import gc, signal, subprocess, sys
import numpy as np, onnx, torch
from onnx import TensorProto, helper
from scnet.engines import OnnxModel

io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in ("input", "output")]
graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "relu", io[:1], io[1:])
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), sys.argv[1])
x = torch.randn(1, 3, 8, 8)
first, second = (OnnxModel(sys.argv[1], engine="openvino") for _ in range(2))
assert torch.equal(first(x), x.relu()) and torch.equal(second(x), x.relu())
del first; gc.collect()
del second; gc.collect()
signal.signal(signal.SIGCHLD, lambda *_: None)  # as a DataLoader with workers does: handled on the signal stack
subprocess.run([sys.executable, "-c", "pass"], check=True)
print("alive")
"""


def test_a_signal_after_two_openvino_engines_are_gone_is_handled(tmp_path: Path) -> None:
    """OpenVINO's CPU plugin swaps the thread's signal stack per Core and puts back what it found when destroyed: two
    Cores gone in the order they were made left a freed stack in place and the next handled signal was a segfault."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _SIGNAL_AFTER_TWO_ENGINES, str(tmp_path / "relu.onnx")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "alive", (done.returncode, done.stderr[-2000:])
