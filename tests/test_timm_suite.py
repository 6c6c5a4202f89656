"""timm's own model test-suite (tests/test_models.py of the installed timm version's sdist), for every scnet model.

The sdist is fetched from PyPI once (``pip download``) into ``$SCNET_CACHE`` (default ``~/.cache/scnet``);
no timm code is kept in this repository. Deselected: the two tests that download each model's official
weights from the internet (``test_model_load_pretrained``, ``test_model_features_pretrained``); the same
loading path is tested offline in test_timm.py and test_weights.py.
"""
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import timm

import scnet

MARKERS = ("base", "forward", "backward", "cfg", "cfg_nonstd", "torchscript", "features", "fxforward", "fxbackward", "timeout")


def _timm_sdist() -> Path:
    cache = Path(os.environ.get("SCNET_CACHE", Path.home() / ".cache" / "scnet"))
    path = cache / f"timm-{timm.__version__}.tar.gz"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"timm=={timm.__version__}", "-d", str(cache)],
            check=True,
        )
    return path


def _parallel() -> list[str]:
    """pytest-xdist's processes, one a CPU (at most 4), when it is installed: the suite is the longest single test,
    and this process only waits for it."""
    try:
        import xdist  # noqa: F401
    except ImportError:
        return []
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return ["-n", str(min(4, cpus))] if cpus > 1 else []


@pytest.mark.slow
def test_timm_model_suite_passes_for_every_scnet_model(tmp_path: Path) -> None:
    with tarfile.open(_timm_sdist()) as tar:
        member = tar.getmember(f"timm-{timm.__version__}/tests/test_models.py")
        (tmp_path / "test_models.py").write_bytes(tar.extractfile(member).read())
    (tmp_path / "conftest.py").write_text("import scnet  # registers the scnet models in timm\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n" + "".join(f"    {m}: timm suite marker\n" for m in MARKERS))
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_ACTIONS"}
    report = tmp_path / "report.xml"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "test_models.py", "-k", "(scnet or scnext) and not pretrained", "-p", "no:cacheprovider",
         "-q", f"--junitxml={report}", *_parallel()],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]  # exit 5 (nothing collected) fails too
    suite = ET.parse(report).getroot().find("testsuite")
    assert int(suite.get("failures")) == int(suite.get("errors")) == int(suite.get("skipped")) == 0
    cases = [c.get("name") for c in suite.iter("testcase")]
    for name in scnet.list_models():
        for test in ("test_model_forward", "test_model_backward", "test_model_forward_features", "test_model_forward_fx"):
            assert any(c.startswith(test + "[") and c.endswith(f"-{name}]") for c in cases), (test, name)
