"""CLI tables and lines: whole names at 80 columns and below, plain unwrapped lines when piped."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from tunesmith import _terminal

HEADERS = ["arm", "accuracy", "macro_f1", "loss", "train s", "wall s", "trainable params"]
ROWS = [["probe (head only, frozen backbone)", "0.8417", "0.8400", "0.4012", "12", "15", "1,538"],
        ["same architecture from scratch", "0.5250", "0.3443", "0.6931", "40", "44", "22,713,218"]]


def output(monkeypatch, terminal: bool, width: int) -> str:
    buffer = io.StringIO()
    monkeypatch.setattr(_terminal, "console", Console(file=buffer, force_terminal=terminal, width=width))
    _terminal.console.soft_wrap = not terminal
    _terminal.print_table("compare (runs/x/compare), validation split", HEADERS, ROWS)
    return buffer.getvalue()


def test_piped_tables_are_plain_whole_lines(monkeypatch):
    text = output(monkeypatch, terminal=False, width=80)
    lines = text.splitlines()
    assert [re.split(r"\s{2,}", line) for line in lines[1:]] == [HEADERS, *ROWS]  # one row per line, cells whole
    assert len(lines) == 4 and "…" not in text and "─" not in text


@pytest.mark.parametrize("width", [80, 60])
def test_a_table_too_wide_for_the_terminal_becomes_one_block_per_row(monkeypatch, width):
    text = output(monkeypatch, terminal=True, width=width)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= width
    assert "probe (head only, frozen backbone)\n  accuracy: 0.8417\n" in text
    assert "  trainable params: 22,713,218" in text


def test_a_table_that_fits_keeps_whole_cells(monkeypatch):
    text = output(monkeypatch, terminal=True, width=140)
    assert "accuracy" in text and "probe (head only, frozen backbone)" in text and "…" not in text
    assert "─" in text  # a rich table, with its borders
