"""The Python snippets of the README, the site's home page and the guides run as written, and the model table is what `scnet info` prints."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from scnet.info import format_table, model_table

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
PAGES = [REPO / "README.md", REPO / "docs" / "index.md", *sorted((REPO / "docs" / "guides").glob("*.md"))]
SNIPPETS = [(page.relative_to(REPO).as_posix(), i, code) for page in PAGES
            for i, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))]


@pytest.mark.parametrize("page, index, code", SNIPPETS, ids=[f"{page}-{i}" for page, i, _ in SNIPPETS])
def test_snippet_runs(page: str, index: int, code: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(REPO)  # snippets are written for the repository root
    monkeypatch.setenv("SCNET_DATA_CACHE", str(tmp_path))  # generated data stays out of the user's cache
    exec(compile(code, f"{page} snippet {index}", "exec"), {})


def test_snippets_exist() -> None:
    assert {page for page, _, _ in SNIPPETS} >= {"README.md", "docs/guides/layer-and-models.md", "docs/guides/performance.md"}


def test_model_table_matches_scnet_info() -> None:
    assert format_table(model_table(), "markdown") in README
