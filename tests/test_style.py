"""Size budgets from STYLE.md, checked on every run: files ≤ 400 lines, functions short."""

from __future__ import annotations

import ast
import statistics
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tunesmith"


def function_lengths() -> dict[str, int]:
    lengths = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lengths[f"{path.relative_to(SRC)}:{node.name}"] = node.end_lineno - node.lineno + 1
    return lengths


def test_files_are_at_most_400_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these files: {long}"


def test_function_sizes():
    lengths = function_lengths()
    values = sorted(lengths.values())
    assert statistics.median(values) <= 20
    assert values[int(0.9 * (len(values) - 1))] <= 60
    too_long = {name: n for name, n in lengths.items() if n > 150}
    assert not too_long, f"split these functions: {too_long}"


def test_no_junk_drawer_modules():
    assert not [p for p in SRC.rglob("*.py") if p.stem in ("utils", "helpers", "misc")]
