"""The README stays true: its config reference matches the schema, and CI runs its test command."""

from __future__ import annotations

from pathlib import Path

from tunesmith.config import reference_markdown

REPO = Path(__file__).resolve().parents[1]


def test_config_reference_is_current():
    assert reference_markdown() in (REPO / "README.md").read_text(), "regenerate with: tunesmith config-reference"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = [line for line in readme.split("## ")[0].splitlines() if line.endswith(".venv/bin/python -m pytest")]
    assert len(commands) == 1, "the README's first section must give one test command"
    command = commands[0]
    assert command in (REPO / ".ci" / "run").read_text()
    assert "tunesmith quickstart" in readme.split("## ")[0]
