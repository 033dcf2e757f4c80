"""docs/reliability.md cites only tests that exist: every `tests/...py::name` (and `::other` after it)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cited_tests(text: str) -> list[tuple[str, str]]:
    """(file, test name) pairs: `tests/a.py::x` and the `::y` citations that follow it in the same cell."""
    pairs = []
    for cell in text.split("|"):
        current = None
        for match in re.finditer(r"(tests/[\w/]+\.py)?::(\w+)", cell):
            current = match.group(1) or current
            if current:
                pairs.append((current, match.group(2)))
    return pairs


def test_every_cited_test_exists():
    text = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    pairs = cited_tests(text)
    assert len(pairs) > 20
    missing = []
    for file, name in pairs:
        path = REPO / file
        defined = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)} if path.is_file() else set()
        if name not in defined:
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/reliability.md cites tests that do not exist: {missing}"
