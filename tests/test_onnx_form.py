"""The graph rewrites made before export (``scnet.fast.onnx_form``): the same function, the intended graph."""
from __future__ import annotations

import collections
import itertools
from pathlib import Path

import pytest
import torch

import scnet
from scnet.engines import OnnxModel
from scnet.export import export_onnx
from scnet.models import SCBottleneck
from scnet.fast.onnx_form import ONNX_REWRITES, OnnxSCBottleneck, onnx_form
from seeded import rel_error, seeded_input, seeded_model, seeded_state_dict

OFFICIAL = ("scnet50", "scnet50_v1d", "scnet101", "scnet101_v1d")
SUBSETS = [c for k in range(len(ONNX_REWRITES) + 1) for c in itertools.combinations(ONNX_REWRITES, k)]


@pytest.mark.parametrize("name", OFFICIAL)
def test_every_rewrite_is_exact_on_the_official_variants(name: str) -> None:
    # In float64 only rounding (~1e-15) is left: a wrong split, a lost bias or a misplaced pool would show.
    model = seeded_model(name).double()
    x = seeded_input((1, 3, 67, 45)).double()  # not a multiple of the pooling rate: the exported gate's path
    blocks = sum(type(m) is SCBottleneck for m in model.modules())
    with torch.no_grad():
        want = model(x)
        for rewrites in SUBSETS if "101" not in name else [ONNX_REWRITES]:  # the deeper twins: the same blocks, more of them
            form = onnx_form(model, rewrites)
            assert sum(type(m) is OnnxSCBottleneck for m in form.modules()) == blocks  # every block rewritten
            assert rel_error(form(x), want) < 1e-12, rewrites


@pytest.mark.parametrize("name", ["sescnet50", "scnext50_32x4d", "scnet_demo"])
def test_the_rewrites_keep_channel_attention_and_groups(name: str) -> None:
    model = seeded_model(name).double()
    x = seeded_input((1, 3, 67, 45)).double()
    with torch.no_grad():
        assert rel_error(onnx_form(model)(x), model(x)) < 1e-12


def test_the_model_is_left_as_it_was_and_unknown_rewrites_are_named() -> None:
    model = seeded_model("scnet_demo")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    onnx_form(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=r"unknown ONNX rewrites \['fuse_all'\]"):
        onnx_form(model, ["split_conv3", "fuse_all"])


def _ops(path: Path) -> collections.Counter:
    import onnx

    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _channel_concats(path: Path) -> int:
    """Concatenations along channels: the block's ``cat[a, b]`` before conv3, which the split removes (the exporter's
    other Concat nodes build shapes, along axis 0)."""
    import onnx

    graph = onnx.load(str(path)).graph
    return sum(node.op_type == "Concat" and onnx.helper.get_attribute_value(node.attribute[0]) == 1 for node in graph.node)


@pytest.mark.slow
def test_the_rewritten_onnx_file_computes_what_the_unrewritten_one_does(tmp_path: Path) -> None:
    # scnet50_v1d's options (deep stem, avg-pool shortcuts, avd: the pool that moves onto each half) on one block a
    # stage and narrow widths; the official variants' own forms are checked above, in PyTorch.
    model = scnet.ResNet(SCBottleneck, (1, 1, 1, 1), num_classes=10, stem_type="deep", stem_width=16, widths=(16, 32, 64, 128),
                         avg_down=True, avd=True).eval()
    model.load_state_dict(seeded_state_dict(model.state_dict()))
    plain, rewritten = tmp_path / "plain.onnx", tmp_path / "rewritten.onnx"
    export_onnx(model, plain, example_size=97)
    export_onnx(model, rewritten, example_size=97, rewrites=ONNX_REWRITES)
    blocks = 4
    before, after = _ops(plain), _ops(rewritten)
    assert _channel_concats(plain) == blocks and _channel_concats(rewritten) == 0
    assert after["Conv"] == before["Conv"]  # one 1x1 fewer per block (merged), one more (split)
    assert after["Slice"] == before["Slice"] + 2 * blocks and "BatchNormalization" not in after
    for shape in [(2, 3, 97, 130), (1, 3, 224, 224)]:
        x = seeded_input(shape)
        assert rel_error(OnnxModel(rewritten)(x), OnnxModel(plain)(x)) < 1e-5, shape
