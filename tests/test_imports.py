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


def test_the_models_spec_needs_no_data_or_transforms() -> None:
    """The spec lives beside the models: ``import scnet`` (models, load, the public API) loads neither the datasets
    nor torchvision's transforms (it did while the spec lived in ``data``); the transform imports them when asked."""
    child = ("import sys, scnet; print(sorted(m for m in ('scnet.data', 'torchvision.transforms.v2') if m in sys.modules)); "
             "scnet.PRETRAINED['scnet50'].transform(); print('torchvision.transforms.v2' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.split() == ["[]", "True"]


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


def _lint_imports(root) -> subprocess.CompletedProcess:
    """import-linter on the package under ``root`` (``root/src/scnet``) with the contracts of ``root/pyproject.toml``."""
    import os

    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    script = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", script, "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, timeout=300, env=env)


def test_the_architecture_pages_layers_hold() -> None:
    """The layering docs/architecture.md draws, as import-linter contracts: no module imports one of a layer above
    its own, and no circle at any depth (two hid behind lazy imports once: engines <-> export, datasets <-> images)."""
    from pathlib import Path

    done = _lint_imports(Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and "2 kept, 0 broken" in done.stdout, done.stdout[-3000:]


def test_a_deliberately_broken_import_fails_the_contracts(tmp_path) -> None:
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "src" / "scnet", tmp_path / "src" / "scnet", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "pyproject.toml", tmp_path / "pyproject.toml")
    gate = tmp_path / "src" / "scnet" / "layers" / "gate.py"
    gate.write_text(gate.read_text() + "\n\ndef _upward():\n    from ..train import compare  # a layer reaching up\n")
    done = _lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout[-3000:]
    assert "scnet.layers is not allowed to import scnet.train" in done.stdout
    assert "No import circles, at any depth BROKEN" in done.stdout  # train imports layers: now a circle too


def test_the_architecture_page_shows_the_checked_layers() -> None:
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    contract = next(c for c in tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
                    if c["type"] == "layers")
    page = (root / "docs" / "architecture.md").read_text()
    shown = re.search(r"<!-- layers:.*?-->\n```text\n(.*?)```", page, flags=re.S).group(1).strip().splitlines()
    assert shown == contract["layers"]
