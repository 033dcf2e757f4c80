"""tunesmith update: a trained run fine-tuned on a newer period, every arm scored on both periods."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "tasks"))
from _tables import write_csv  # tests/tasks/_tables.py  # noqa: E402

from tunesmith.comparison.update import update  # noqa: E402
from tunesmith.errors import DataError, RunDirError  # noqa: E402

FAST = ["training.num_train_epochs=3", "training.per_device_train_batch_size=64"]


def periods(tmp_path: Path) -> dict[str, str]:
    """scikit-learn's breast-cancer records cut in two "periods": the second with shifted measurements."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.target))

    def rows(idx, shift: float) -> list[dict]:
        return [{**{f"m{j}": f"{v * (1 + shift):.5g}" for j, v in enumerate(data.data[i][:10])},
                 "diagnosis": "malignant" if data.target[i] == 0 else "benign"} for i in idx]

    return {"old_train": write_csv(tmp_path / "old_train.csv", rows(order[:220], 0.0)),
            "old_val": write_csv(tmp_path / "old_val.csv", rows(order[220:300], 0.0)),
            "new": write_csv(tmp_path / "new.csv", rows(order[300:], 0.3))}


@pytest.fixture
def parent(tmp_path):
    from tunesmith.run import finetune

    files = periods(tmp_path)
    result = finetune({"task": "tabular-classification", "output_dir": str(tmp_path / "parent"),
                       "data": {"train": files["old_train"], "validation": files["old_val"], "label_column": "diagnosis"},
                       "training": {"num_train_epochs": 6, "per_device_train_batch_size": 64, "seed": 0}}, quiet=True)
    return result.run_dir, files


def test_every_arm_is_scored_on_both_periods_with_the_lineage(parent, tmp_path):
    run_dir, files = parent
    result = update(run_dir, files["new"], tmp_path / "updated", overrides=FAST, quiet=True)
    arms = [a.arm for a in result.arms]
    assert arms == ["stale", "update", "replay", "l2sp", "retrain", "scratch", "wise"]
    assert all(a.old is not None and "auprc" in a.new for a in result.arms)  # the parent's validation file is the old period
    assert result.row("stale").train_seconds is None and result.row("update").train_seconds > 0
    assert result.alpha in (0.0, 0.25, 0.5, 0.75, 1.0)
    saved = json.loads((tmp_path / "updated" / "update.json").read_text())
    lineage = saved["lineage"]
    assert lineage["parent"] == str(run_dir.resolve()) and len(lineage["new_train"]["sha256"]) == 64
    assert Path(lineage["new_validation"]["path"]).name == "new_validation.csv"  # held out of --data, once for all arms
    assert lineage["old_validation"]["path"] == str(Path(files["old_val"]).resolve())
    summary = (tmp_path / "updated" / "summary.md").read_text()
    assert "| update + replay |" in summary and "backward transfer" in summary
    assert (tmp_path / "updated" / "update" / "best" / "tabular_model.json").is_file()
    replayed = (tmp_path / "updated" / "data" / "replay_train.csv").read_text().splitlines()
    new_rows = (tmp_path / "updated" / "data" / "new_train.csv").read_text().splitlines()
    assert len(replayed) - 1 == (len(new_rows) - 1) + round(0.25 * (len(new_rows) - 1))


def test_the_cli_default_arms_are_the_update_arms():
    from tunesmith.cli import UPDATE_ARMS
    from tunesmith.comparison.update import ARMS

    assert UPDATE_ARMS == ",".join(ARMS)


def test_only_the_update_runs_without_guards_and_an_earlier_update_is_kept(parent, tmp_path):
    run_dir, files = parent
    result = update(run_dir, files["new"], tmp_path / "u", arms=(), overrides=FAST, quiet=True)
    assert [a.arm for a in result.arms] == ["stale", "update"]
    with pytest.raises(RunDirError, match="already holds an update"):
        update(run_dir, files["new"], tmp_path / "u", arms=(), overrides=FAST, quiet=True)


def test_bad_parents_guards_and_files_are_refused(parent, tmp_path):
    run_dir, files = parent
    with pytest.raises(RunDirError, match="is not a tunesmith run directory with a best model"):
        update(tmp_path, files["new"], tmp_path / "a")
    with pytest.raises(DataError, match="unknown arm 'ewc'; choose from update, replay, l2sp, wise, retrain, scratch"):
        update(run_dir, files["new"], tmp_path / "b", arms=("ewc",))
    with pytest.raises(DataError, match="data file not found: .*nope.csv"):
        update(run_dir, files["new"], tmp_path / "c", validation=str(tmp_path / "nope.csv"))


@pytest.mark.slow
def test_bank_marketing_2009_update_beats_the_stale_model_and_the_guards_bound_forgetting(shared_data, tmp_path):
    """benchmarks/bank_marketing_update.py's first step, seed 0 (stale 0.305 -> updated 0.425 on 2009; replay
    keeps 2008 at 0.068 of the stale 0.083, where 2008 itself is barely predictable: 4.8% positive)."""
    from tunesmith.data.period_files import split_rows
    from tunesmith.run import finetune

    bank = shared_data / "bank_marketing"
    train, val = split_rows(str(bank / "period_1.csv"), 0.1, 0, tmp_path / "p1")
    parent = finetune({"task": "tabular-classification", "output_dir": str(tmp_path / "parent"),
                       "data": {"train": train, "validation": val, "label_column": "y"},
                       "tabular_classification": {"drop": ["row_id", "year", "duration"]},
                       "training": {"seed": 0}}, quiet=True)
    result = update(parent.run_dir, bank / "period_2.csv", tmp_path / "2009", arms=("replay", "wise"), quiet=True)
    stale, updated, replay, wise = (result.row(a) for a in ("stale", "update", "replay", "wise"))
    assert updated.new["auprc"] > stale.new["auprc"] + 0.08
    assert replay.new["auprc"] > stale.new["auprc"] + 0.08
    assert replay.old["auprc"] > stale.old["auprc"] - 0.03  # the 2008 drop stays within 0.03 AUPRC
    mean = {a.arm: (a.new["auprc"] + a.old["auprc"]) / 2 for a in (stale, updated, wise)}
    assert mean["wise"] >= max(mean["stale"], mean["update"])  # its mixing weight is chosen on both periods


def test_the_cli_prints_the_table_and_where_the_update_went(parent, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    run_dir, files = parent
    out = CliRunner().invoke(app, ["update", str(run_dir), "--data", files["new"], "--output-dir", str(tmp_path / "cli"),
                                   "--arms", "update,scratch", "-q", *[a for s in FAST for a in ("-s", s)]])
    assert out.exit_code == 0, out.output
    assert "forward gain" in out.output and "from scratch on the new rows" in out.output
    assert f"updated model: {tmp_path / 'cli' / 'update' / 'best'}" in out.output.replace("\n", "")


def test_a_text_classifier_is_updated_the_same_way(tiny_config, reviews, tmp_path):
    """update works for every task: the tiny BERT on the shipped reviews, its WiSE-FT weights loaded by transformers."""
    from tunesmith.run import finetune

    parent = finetune({**tiny_config, "data": {**tiny_config["data"], "max_train_samples": 48}}, quiet=True)
    result = update(parent.run_dir, reviews, tmp_path / "text", arms=("replay", "wise"),
                    overrides=["training.num_train_epochs=1", "data.max_train_samples=48"], quiet=True)
    assert [a.arm for a in result.arms] == ["stale", "update", "replay", "wise"]
    assert result.metric == "accuracy" and result.row("update").old is None  # the parent split its validation off
    assert any("old period" in n for n in result.notes)
    assert (tmp_path / "text" / "wise" / "chosen" / "best" / "config.json").is_file()
