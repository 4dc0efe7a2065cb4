"""Every Python block of the README and the manual runs as written.

The blocks of one page run in order in one namespace (a page may build on its earlier blocks), in a
temporary working directory. A block that needs what a test machine does not have (Julia, a GPU, a
dataset on disk) is marked in the page, on the line before it, with ``<!-- not run: reason -->``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- not run: (?P<why>[^>]*?) -->\n)?```python\n(?P<code>.*?)^```", re.S | re.M)


def python_blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """(line, code, reason it is not run or None) of each ```python block."""
    text = page.read_text()
    return [(text.count("\n", 0, m.start("code")) + 1, m.group("code"), m.group("why")) for m in BLOCK.finditer(text)]


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_every_python_block_of_the_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    ran = 0
    for line, code, not_run in python_blocks(page):
        if not_run is not None:
            assert not_run.strip(), f"{page.name}:{line}: say why the block is not run"
            continue
        exec(compile(code, f"{page.name}:{line}", "exec"), namespace)  # noqa: S102 - the repository's own docs
        ran += 1
    assert ran or all(why for _, _, why in python_blocks(page))


def test_the_block_pattern_sees_every_block():
    for page in PAGES:
        assert len(python_blocks(page)) == page.read_text().count("```python"), page.name
