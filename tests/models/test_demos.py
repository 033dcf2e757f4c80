"""The one catalogue of demo sources: every family's aliases, what each is, and the task each implies."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.errors import ModelSourceError
from tunesmith.models.demos import check_task, demos
from tunesmith.models.sources import resolve_source


def test_every_family_registers_in_one_catalogue():
    found = demos()
    assert {"minilm", "smollm2", "efficientnet-lite0"} <= set(found)
    assert found["efficientnet-lite0"].modality == "image" and found["minilm"].modality == "text"
    assert all("/" in d.base_model or d.modality == "image" for d in found.values())


def test_an_unknown_alias_lists_every_family():
    with pytest.raises(ModelSourceError) as err:
        resolve_source("demo:nope")
    assert "demo:efficientnet-lite0 (image)" in str(err.value) and "demo:minilm (text)" in str(err.value)


def test_an_alias_of_another_modality_names_the_task_to_use():
    with pytest.raises(ModelSourceError, match="demo:efficientnet-lite0 is for image .* set task: image-classification"):
        resolve_source("demo:efficientnet-lite0")
    with pytest.raises(ModelSourceError, match="set task: causal-lm"):
        check_task("demo:smollm2", "image-classification")


def test_the_tasks_command_lists_tasks_and_demo_sources():
    result = CliRunner().invoke(app, ["tasks"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("question_answering", "demo:efficientnet-lite0", "sentence-transformers/all-MiniLM-L6-v2", "f1, exact_match"):
        assert text in result.output


@pytest.mark.slow
def test_inspect_infers_the_image_task_from_the_demo_source():
    result = CliRunner().invoke(app, ["inspect", "-m", "demo:efficientnet-lite0"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "stage.0" in result.output and "head" in result.output
