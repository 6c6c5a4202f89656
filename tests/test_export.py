"""Export: ONNX (checked with onnxruntime at odd sizes), TorchScript, torch.export and torch.compile."""
import re
from pathlib import Path

import pytest
import torch
from torch.export import Dim

import scnet
from scnet.cli import main
from scnet.engines import check_onnx
from scnet.export import min_export_size
from scnet.models import SCBottleneck
from seeded import seeded_input, seeded_state_dict


def _seeded_checkpoint(name: str, path: Path, **kwargs) -> torch.nn.Module:
    # Seeded weights carry realistic norm statistics (see seeded.py), unlike a fresh init whose activations
    # blow up and make any parity number meaningless.
    model = scnet.create_model(name, **kwargs).eval()
    model.load_state_dict(seeded_state_dict(model.state_dict(), seed=13))
    torch.save(model.state_dict(), path)
    return model


def test_min_export_size() -> None:
    assert min_export_size(scnet.create_model("scnet50")) == 97  # the official code's limit, for the same reason
    assert min_export_size(scnet.create_model("scnet50", stem_type="small")) == 25
    assert min_export_size(scnet.create_model("scnet50_plain")) == 1


@pytest.mark.slow
def test_onnx_export_matches_onnxruntime_at_three_sizes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = _seeded_checkpoint("scnet50_v1d", tmp_path / "w.pth")
    out = tmp_path / "scnet50_v1d.onnx"
    assert main(["export", "--model", "scnet50_v1d", "--checkpoint", str(tmp_path / "w.pth"), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "inputs >= 97x97" in printed and len(re.findall(r"argmax equal -> ok", printed)) == 3
    rows = check_onnx(model, out, [(97, 130), (193, 257), (224, 224)], seed=1)
    assert all(r["rel_error"] <= 1e-4 and r["argmax_equal"] for r in rows), rows


def test_torchscript_export_any_size(tmp_path: Path) -> None:
    model = _seeded_checkpoint("scnet50", tmp_path / "w.pth", num_classes=10)
    out = tmp_path / "m.pt"
    assert main(["export", "--model", "scnet50", "--num-classes", "10", "--checkpoint", str(tmp_path / "w.pth"),
                 "--format", "torchscript", "--out", str(out)]) == 0
    loaded = torch.jit.load(str(out))
    for shape in [(1, 3, 33, 47), (2, 3, 97, 130)]:
        x = seeded_input(shape)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x))


def test_export_cli_errors(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--model", "scnet50", "--out", "x.onnx", "--check-sizes", "97by130"])
    assert "expected HxW such as 97x130, got '97by130'" in capsys.readouterr().err
    assert main(["export", "--model", "scnet5", "--out", "x.onnx"]) == 2
    assert "scnet export: error: unknown model 'scnet5'; did you mean" in capsys.readouterr().err


def _tiny_sc() -> torch.nn.Module:
    model = scnet.ResNet(SCBottleneck, (1, 1, 1, 1), num_classes=10).eval()
    model.load_state_dict(seeded_state_dict(model.state_dict(), seed=14))
    return model


def test_torch_export_with_dynamic_height_width() -> None:
    # Strict torch.export specialises on "the deepest pooled calibration map is not 1x1" (nearest upsampling of
    # a 1x1 map), so a dynamic range must keep that map at least 2x2: sides >= 225 for the ImageNet stem.
    # (torch.onnx.export defers that check and its graph is correct from 97 px, see the ONNX test.)
    model = _tiny_sc()
    dims = {"x": {0: Dim("batch", min=1, max=64), 2: Dim("h", min=225, max=1024), 3: Dim("w", min=225, max=1024)}}
    program = torch.export.export(model, (seeded_input((2, 3, 256, 256)),), dynamic_shapes=dims)
    for shape in [(1, 3, 225, 300), (3, 3, 320, 257)]:
        x = seeded_input(shape)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


def test_torch_compile_captures_the_whole_network_as_one_graph() -> None:
    # fullgraph: dynamo must capture the reference network without a single graph break, and the captured graph
    # (through AOTAutograd, as inductor would take it) computes what eager does. Inductor's code for these operators
    # is checked where it is cheaper: test_scconv compiles the SC layer, test_deploy the fused network.
    model = _tiny_sc()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = seeded_input((2, 3, 97, 130))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


def test_onnx_export_of_any_module_whatever_its_forward_argument_is_named(tmp_path: Path) -> None:
    # nn.Sequential's forward takes "input", not "x": the dynamic sizes are given by position, so it exports too.
    from scnet.engines import OnnxModel
    from scnet.export import export_onnx
    from scnet.layers import SCConv

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), SCConv(8), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    assert export_onnx(model, tmp_path / "seq.onnx", example_size=32) == 4  # the calibration window, r = 4
    x = seeded_input((2, 3, 40, 48))
    with torch.no_grad():
        torch.testing.assert_close(OnnxModel(tmp_path / "seq.onnx")(x), model(x), rtol=1e-4, atol=1e-5)
