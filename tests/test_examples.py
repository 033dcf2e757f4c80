"""Every shipped example and benchmark config loads and passes its preflight (data paths included).

Configs are read from the repository root, as their comments tell users to run them. Those whose
data lies in ../shared/data skip only when that folder is absent; the question-generation example's
pairs are first written from the SQuAD files by the benchmark's own `prepare_pairs`. An example that
fine-tunes another example's run (`model.source: runs/...`, absent until that example has run) is
checked with a new model in its place.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tunesmith.config import load_config
from tunesmith.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted([*REPO.glob("examples/*.yaml"), *REPO.glob("benchmarks/*.yaml")])


def squad_pairs() -> None:
    spec = importlib.util.spec_from_file_location("squad_benchmark", REPO / "benchmarks" / "squad.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.prepare_pairs()


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO)) for p in CONFIGS])
def test_shipped_config_passes_its_preflight(path, monkeypatch):
    monkeypatch.chdir(REPO)
    text = path.read_text(encoding="utf-8")
    if "../shared/data" in text or "benchmarks/out/squad-qg" in text:
        if not (REPO.parent / "shared" / "data").is_dir():
            pytest.skip("its data lies in ../shared/data, which is absent")
    if "benchmarks/out/squad-qg" in text:
        squad_pairs()
    config = load_config(path)
    if config.model.source.startswith("runs/") and not (REPO / config.model.source).exists():
        config = config.model_copy(update={"model": config.model.model_copy(update={"source": "new"})})
    task = get_task(config)
    task.preflight()
    assert len(task.eval_rows) > 0
    if config.data.train is not None:
        assert len(task.train_rows) > 0


def test_every_example_is_covered():
    assert len([p for p in CONFIGS if p.parent.name == "examples"]) >= 9
