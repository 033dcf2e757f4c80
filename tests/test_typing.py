"""mypy over src/tunesmith with the pyproject.toml config, and proof that it catches a task class
that lacks a member of the `Task` protocol (the engine's functions take `task: Task`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A task with every `Task` member; `{metric_names}` is the line under test.
STUB_TASK = '''
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from tunesmith.config import RunConfig, Section
from tunesmith.data.labelled import LabelledRows
from tunesmith.engine.evaluation import write_predictions
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.tasks import register_task


@register_task("stub")
class StubTask:
    name: ClassVar[str]
    {metric_names}
    settings: ClassVar[type[Section] | None] = None
    supports_activation_cache: ClassVar[bool] = False

    def __init__(self, config: RunConfig) -> None:
        self.train_rows: LabelledRows | None = None
        self.eval_rows: LabelledRows | None = None
        self.label_names: list[str] = []
        self.truncated = 0

    def preflight(self) -> None: ...
    def unlabelled_rows(self, path: str) -> LabelledRows: raise NotImplementedError
    def build_model(self) -> nn.Module: raise NotImplementedError
    def load_trained(self) -> nn.Module: raise NotImplementedError
    def layer_groups(self, model: nn.Module) -> list[LayerGroup]: raise NotImplementedError
    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> list[dict[str, Any]]: return []
    def lengths(self, dataset: list[dict[str, Any]]) -> list[int] | None: return None
    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]: return {{}}
    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: raise NotImplementedError
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
    def batch_outputs(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[Any]: return []
    def row_outputs(self, rows: LabelledRows, examples: list[Any]) -> list[Any]: return examples
    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]: return {{}}
    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]: return []
    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None: ...
    def describe(self) -> dict[str, Any]: return {{}}
    def card_usage(self) -> str: return ""


def predict_with(config: RunConfig) -> None:
    write_predictions(Path("predictions.jsonl"), StubTask(config), LabelledRows("mem", {{}}, [], []), [])
'''


@pytest.fixture(scope="module")
def mypy_report(tmp_path_factory) -> dict[str, list[str]]:
    """One mypy run over src/tunesmith plus two stub tasks (with and without `metric_names`);
    its error lines by file."""
    folder = tmp_path_factory.mktemp("typing")
    (folder / "complete_task.py").write_text(STUB_TASK.format(
        metric_names='metric_names: ClassVar[tuple[str, ...]] = ("accuracy",)'))
    (folder / "missing_metric_names.py").write_text(STUB_TASK.format(metric_names="# no metric_names"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "src/tunesmith", str(folder / "complete_task.py"),
         str(folder / "missing_metric_names.py")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert "error:" in result.stdout or result.returncode == 0, f"mypy did not run: {result.stdout}{result.stderr}"
    lines: dict[str, list[str]] = {"src": [], "complete": [], "missing": []}
    for line in result.stdout.splitlines():
        key = ("missing" if "missing_metric_names.py" in line else "complete" if "complete_task.py" in line
               else "src" if line.startswith("src") else None)
        if key:
            lines[key].append(line)
    return lines


def test_src_passes_mypy(mypy_report):
    errors = [line for line in mypy_report["src"] if ": error:" in line]
    assert not errors, "mypy (config in pyproject.toml [tool.mypy]) reports:\n" + "\n".join(errors)


def test_a_task_with_every_protocol_member_passes(mypy_report):
    assert not mypy_report["complete"], "\n".join(mypy_report["complete"])


def test_a_task_missing_a_protocol_member_is_reported(mypy_report):
    report = "\n".join(mypy_report["missing"])
    assert 'is missing following "Task" protocol member' in report, report
    assert any(line.split("note:")[-1].strip() == "metric_names" for line in mypy_report["missing"]), report
