"""``import scnet`` runs no tensor operation and changes no global torch setting: probes happen on first use."""
from __future__ import annotations

import json
import subprocess
import sys

_CHILD = r"""
import json, torch
from torch.profiler import ProfilerActivity, profile

def settings():
    return dict(threads=torch.get_num_threads(), dtype=str(torch.get_default_dtype()), grad=torch.is_grad_enabled(),
                deterministic=torch.are_deterministic_algorithms_enabled(), cudnn_benchmark=torch.backends.cudnn.benchmark,
                tf32=torch.backends.cuda.matmul.allow_tf32)

before = settings()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    import scnet
    import scnet.fast, scnet.bench, scnet.train, scnet.viz, scnet.export, scnet.predict, scnet.cli
print(json.dumps(dict(ops=[e.name for e in prof.events() if e.name.startswith("aten::")], before=before, after=settings())))
"""


def test_import_runs_no_tensor_operation_and_sets_no_flag() -> None:
    # A fresh interpreter: in this one scnet is imported already. The oneDNN probe alone used to run 47 aten ops.
    done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ops"] == []
    assert result["after"] == result["before"]


def test_onednn_probe_runs_on_first_use_and_once(monkeypatch) -> None:
    from scnet.fast import fusion

    calls = []
    monkeypatch.setattr(fusion, "_ONEDNN", None)  # as after import: not probed yet
    monkeypatch.setattr(fusion, "_probe_onednn", lambda: calls.append(1) or True)
    assert fusion.onednn_fusion_available() is True and fusion.onednn_fusion_available() is True
    assert calls == [1]  # probed on the first call only, then cached


def test_reference_modules_import_no_speed_code() -> None:
    """The reference reads like the paper: nothing in ``scnet.layers`` or ``scnet.models`` imports ``scnet.fast``, and
    the forwards of the SC layer, its branch, the bottlenecks and the trunk hold no execution-mode branch, private
    torch API or kernel."""
    import ast
    import inspect
    from pathlib import Path

    import scnet
    from scnet.models import Bottleneck, ResNet, SCBottleneck

    root = Path(scnet.__file__).parent
    for path in [*(root / "layers").glob("*.py"), *(root / "models").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "fast" not in (node.module or "").split("."), f"{path.name} imports {node.module}"
    for cls in (scnet.SelfCalibration, scnet.SCConv, SCBottleneck, Bottleneck):
        source = inspect.getsource(cls.forward)
        for word in ("training", "jit", "torch._", "torch.ops", "triton", "compiling", "eager"):
            assert word not in source, f"{cls.__name__}.forward mentions {word!r}"
    assert "training" not in inspect.getsource(ResNet.forward_features)
