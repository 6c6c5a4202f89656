"""The Lightning example (examples/lightning_train.py) trains through the fast forms, to the reference's weights."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lightning_train.py"


def _example():
    spec = importlib.util.spec_from_file_location("lightning_train", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_lightning_example_trains_the_fast_forms_to_the_reference_weights() -> None:
    from scnet.fast.training import FastSCBottleneck

    example = _example()
    # In float64: six float32 steps of a tiny set amplify rounding differences (1e-7 after a step) past any tolerance.
    args = ["--data", "synthetic", "--batch-size", "32", "--lr", "0.05", "--precision", "64-true", "--max-steps"]
    start = example.main([*args, "0"]).model.state_dict()
    fast, reference = example.main([*args, "6"]), example.main([*args, "6", "--reference"])
    assert any(isinstance(m, FastSCBottleneck) for m in fast.model.modules())  # the fast forms trained
    assert not any(isinstance(m, FastSCBottleneck) for m in reference.model.modules())
    trained = fast.model.state_dict()
    for key, value in reference.model.state_dict().items():
        assert torch.allclose(trained[key], value, rtol=1e-9, atol=1e-12), key
        if value.is_floating_point() and key.endswith("conv1.weight"):
            assert not torch.equal(value, start[key]), key  # 6 steps moved the weights
