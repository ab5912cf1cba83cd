"""Every ```python block of README.md runs, in order and in one namespace, as a reader would
paste them; a block's printed line must be the one the README quotes after it."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```\n(?:\n(It prints `([^`]*)`)?)?", re.S | re.M)


def _blocks() -> list[tuple[str, str | None]]:
    return [(m[1], m[3]) for m in BLOCK.finditer(README.read_text())]


def test_readme_has_python_blocks():
    assert len(_blocks()) >= 2


def test_every_python_block_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks write their files here
    namespace: dict = {}
    for i, (code, quoted) in enumerate(_blocks()):
        if "transformers" in code and importlib.util.find_spec("transformers") is None:
            continue  # a test extra
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
        if quoted is not None:
            assert out.getvalue().strip() == quoted, f"block {i + 1} printed something else"


@pytest.mark.parametrize("text, expected", [
    ("```python\nx = 1\n```\n\nIt prints `1`.\n", ("x = 1\n", "1")),
    ("```python\nx = 1\n```\n\nOther prose.\n", ("x = 1\n", None)),
])
def test_block_pattern(text, expected):
    m = BLOCK.search(text)
    assert (m[1], m[3]) == expected
