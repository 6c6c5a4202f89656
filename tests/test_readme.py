"""The README's Python snippets run as written, and its model table is what `scnet info` prints."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from scnet.info import format_table, model_table

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs(index: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(REPO)  # snippets are written for the repository root
    monkeypatch.setenv("SCNET_DATA_CACHE", str(tmp_path))  # generated data stays out of the user's cache
    exec(compile(SNIPPETS[index], f"README.md snippet {index}", "exec"), {})


def test_snippets_exist() -> None:
    assert SNIPPETS


def test_model_table_matches_scnet_info() -> None:
    assert format_table(model_table(), "markdown") in README
