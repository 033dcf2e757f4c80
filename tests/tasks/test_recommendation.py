"""recommendation: the bias baseline start reproduces the data's reference RMSE, new users fold in from a few
ratings each (beating the parent's fallback, near a full retrain), the tables grow while the parent's rows stay
exact, the held-out rows are the latest, and best/ serves recommendations without tunesmith."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tunesmith.config import load_config
from tunesmith.errors import ConfigError, DataError
from tunesmith.tasks import get_task

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "movietweetings_100k"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/movietweetings_100k is absent")


def contract_case(request, make) -> dict:
    """The task contract's case (tests/tasks/test_contract.py): ratings of 6 users on 8 items over time."""
    rows = [{"user_id": f"u{int(make.rng.integers(6))}", "item_id": f"i{int(make.rng.integers(8))}",
             "rating": str(int(make.rng.integers(1, 6))), "timestamp": str(1_000_000 + 60 * n)} for n in range(48)]
    return {"model": {"source": "mf"}, "data": {"train": make.jsonl(rows)}, "recommendation": {"factors": 4, "top_k": 3}}


def raw_config(tmp_path: Path, name: str, train: str, validation: str, **options) -> dict:
    return {"task": "recommendation", "output_dir": str(tmp_path / name), "overwrite_output_dir": True,
            "data": {"train": train, "validation": validation},
            "training": {"seed": 0, "dataloader_num_workers": 0, "num_train_epochs": 8},
            "recommendation": options}


def standalone(folder: Path):
    spec = importlib.util.spec_from_file_location("recommender_model", folder / "recommender_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load(folder)


@needs_data
def test_the_bias_start_scores_the_reference_rmse_of_the_time_split(tmp_path):
    """data/movietweetings_100k/SOURCE.md: user + item biases shrunk with 5, unseen ids 0, clipped: test RMSE 1.662."""
    from tunesmith.run import evaluate

    config = raw_config(tmp_path, "run", str(DATA / "train.csv"), str(DATA / "test.csv"))
    config["training"]["num_train_epochs"] = 0.001  # one step: the run's baseline is the untouched start
    from tunesmith.run import finetune

    result = finetune(config, quiet=True)
    assert result.baseline["rmse"] == pytest.approx(1.662, abs=5e-4)
    assert result.baseline["starting_point"] == "user + item bias baseline"
    facts = json.loads((result.run_dir / "data.json").read_text())
    assert facts["validation"]["rows_of_unknown_users"] == 2795  # SOURCE.md: 72.1% of the test rows by known users
    assert evaluate(str(result.run_dir), str(DATA / "test.csv"))["rmse"] == pytest.approx(result.final["rmse"], rel=1e-6)


def _fold_in_split(tmp_path: Path) -> dict[str, str]:
    """Old users' rows; 300 new users (>= 8 ratings) with their first 3 ratings to fold in and the rest held out."""
    frame = pd.read_csv(DATA / "train.csv", dtype=str)
    counts = frame["user_id"].value_counts()
    new = set(np.random.default_rng(0).choice(sorted(counts[counts >= 8].index), 300, replace=False))
    is_new = frame["user_id"].isin(new)
    rank = frame[is_new].groupby("user_id").cumcount()  # the file is in time order
    files = {"old": frame[~is_new], "fold_in": frame[is_new][rank < 3], "held_out": frame[is_new][rank >= 3]}
    files["old_and_fold_in"] = pd.concat([files["old"], files["fold_in"]])
    paths = {}
    for name, part in files.items():
        paths[name] = str(tmp_path / f"{name}.csv")
        part.to_csv(paths[name], index=False)
    return paths


@needs_data
@pytest.mark.slow
def test_new_users_fold_in_from_three_ratings_each_near_a_full_retrain(tmp_path):
    from safetensors.torch import load_file

    from tunesmith.run import evaluate, finetune

    f = _fold_in_split(tmp_path)
    parent = finetune(raw_config(tmp_path, "parent", f["old"], f["held_out"]), quiet=True)
    fold = raw_config(tmp_path, "fold_in", f["fold_in"], f["held_out"], update_ids="new")
    fold["model"] = {"source": str(parent.run_dir)}
    fold["strategy"] = {"freeze_groups": ["item_embeddings", "item_biases"]}
    fold["training"].update(per_device_train_batch_size=128, num_train_epochs=10)  # 900 rows: 8 steps an epoch
    folded = finetune(fold, quiet=True)
    retrained = finetune(raw_config(tmp_path, "retrain", f["old_and_fold_in"], f["held_out"]), quiet=True)

    stale = evaluate(str(parent.run_dir), f["held_out"])  # every held-out user is unknown to the parent: its fallback
    assert stale["segments"].keys() == {"unknown_users"}
    assert folded.final["segments"].keys() == {"new_users"}
    assert folded.baseline["starting_point"] == "parent model"
    assert folded.final["rmse"] < stale["rmse"] - 0.05, (folded.final["rmse"], stale["rmse"])  # measured 1.521 vs 1.600
    assert folded.final["rmse"] < retrained.final["rmse"] * 1.02, (folded.final["rmse"], retrained.final["rmse"])  # 1.526
    assert folded.train_seconds < retrained.train_seconds / 2

    before, after = (load_file(str(r.run_dir / "best" / "model.safetensors")) for r in (parent, folded))
    old_users = before["user_embeddings.weight"].shape[0]
    assert after["user_embeddings.weight"].shape[0] == old_users + 300  # the table grew by the new users
    for name in ("user_embeddings.weight", "user_biases.weight", "item_embeddings.weight", "item_biases.weight"):
        rows = before[name].shape[0]
        assert after[name][:rows].equal(before[name]), name  # the parent's rows are exactly as they were


@needs_data
def test_best_serves_top_k_without_tunesmith_leaving_out_seen_items_and_falling_back_for_unknown_users(tmp_path):
    from tunesmith.run import finetune, predict

    frame = pd.read_csv(DATA / "train.csv", dtype=str)
    frame.iloc[:20000].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[20000:22000].to_csv(tmp_path / "later.csv", index=False)
    config = raw_config(tmp_path, "run", str(tmp_path / "train.csv"), str(tmp_path / "later.csv"), top_k=5)
    config["training"]["num_train_epochs"] = 2
    result = finetune(config, quiet=True)
    card = (result.run_dir / "README.md").read_text()
    assert "recommender_model.load(" in card and "Labels:" not in card and "| class |" not in card  # no labels here
    model = standalone(result.run_dir / "best")
    heavy = frame.iloc[:20000]["user_id"].value_counts().index[0]
    top = model.recommend([heavy, "nobody"], k=5)
    seen = set(frame.iloc[:20000].query("user_id == @heavy")["item_id"])
    assert len(top[0]) == 5 and not {item for item, _ in top[0]} & seen
    counts = frame.iloc[:20000]["item_id"].value_counts()
    assert [item for item, _ in top[1]] == list(counts.index[:5])  # ties aside, the most rated items

    pd.DataFrame({"user_id": [heavy, "nobody"]}).to_csv(tmp_path / "users.csv", index=False)
    written = predict(str(result.run_dir), str(tmp_path / "users.csv"), str(tmp_path / "top.jsonl"))
    records = [json.loads(line) for line in Path(written).read_text().splitlines()]
    assert records[0]["items"] == [item for item, _ in top[0]]
    assert records[1]["fallback"] == "popularity (unknown user)" and records[0]["fallback"] is None
    table = pd.read_csv(predict(str(result.run_dir), str(tmp_path / "users.csv"), str(tmp_path / "top.csv")))
    assert json.loads(table["items"][0]) == records[0]["items"]  # a list cell is JSON in a CSV

    pairs = frame.iloc[20000:20050][["user_id", "item_id"]]
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    scored = [json.loads(line)["score"] for line in
              Path(predict(str(result.run_dir), str(tmp_path / "pairs.csv"), str(tmp_path / "s.jsonl"))).read_text().splitlines()]
    np.testing.assert_allclose(scored, model.score(pairs["user_id"].tolist(), pairs["item_id"].tolist()), rtol=1e-5, atol=1e-5)
    assert 0 <= min(scored) and max(scored) <= 10  # clipped to the training ratings' range


def _rows(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "ratings.csv"
    path.write_text("user_id,item_id,rating,timestamp\n" + "\n".join(lines) + "\n")
    return str(path)


def test_bad_ratings_and_times_are_named_by_line(tmp_path, caplog):
    good = [f"u{n % 4},i{n % 5},{n % 5 + 1},{1000 + n}" for n in range(20)]
    path = _rows(tmp_path, good[:3] + ["u1,i2,great,1010", "u2,i3,4,yesterday-ish"] + good[3:])
    config = {"task": "recommendation", "output_dir": str(tmp_path / "run"), "data": {"train": path, "bad_rows": "error"}}
    with pytest.raises(DataError, match=r"ratings.csv: 2 bad rows: line 5 \(rating 'great' is not a number\), "
                                        r"line 6 \(timestamp 'yesterday-ish' is neither a number nor a date\)"):
        get_task(load_config(config)).preflight()
    config["data"]["bad_rows"] = "skip"
    with caplog.at_level(logging.WARNING, logger="tunesmith"):
        task = get_task(load_config(config))
        task.preflight()
    assert "skipping 2 bad rows" in caplog.text
    assert len(task.train_rows) + len(task.eval_rows) == 20


def test_the_held_out_rows_are_the_latest_and_dates_order_them(tmp_path):
    lines = [f"u{n % 3},i{n},{n % 5 + 1},2024-01-{n + 1:02d}" for n in range(20)]
    config = {"task": "recommendation", "output_dir": str(tmp_path / "run"),
              "data": {"train": _rows(tmp_path, lines[::-1]), "validation_split": 0.2}}  # file order is not time order
    task = get_task(load_config(config))
    task.preflight()
    assert sorted(task.eval_rows.inputs["item_id"]) == ["i16", "i17", "i18", "i19"]
    config["recommendation"] = {"holdout": "last_per_user"}
    task = get_task(load_config(config))
    task.preflight()
    assert sorted(task.eval_rows.inputs["item_id"]) == ["i17", "i18", "i19"]  # each user's last rating


def test_implicit_feedback_selects_by_ndcg_and_explicit_by_rmse(tmp_path):
    base = {"task": "recommendation", "output_dir": str(tmp_path / "run")}
    assert load_config(base).training.metric_for_best_model == "rmse"
    implicit = load_config({**base, "recommendation": {"feedback": "implicit", "rating_column": None}})
    assert implicit.training.metric_for_best_model == "ndcg_at_k"
    assert implicit.greater_is_better
    with pytest.raises(ConfigError, match="update_ids: new keeps the parent's rows"):
        get_task(load_config({**base, "training": {"weight_decay": 0.01}, "recommendation": {"update_ids": "new"}}))


def test_freezing_a_group_by_a_name_the_model_lacks_names_its_groups(tmp_path):
    from tunesmith.run import finetune

    lines = [f"u{n % 4},i{n % 5},{n % 5 + 1},{1000 + n}" for n in range(40)]
    config = {"task": "recommendation", "output_dir": str(tmp_path / "run"), "data": {"train": _rows(tmp_path, lines)},
              "strategy": {"freeze_groups": ["item_tower"]}, "training": {"num_train_epochs": 1}}
    with pytest.raises(ConfigError, match="'item_tower' is no layer group of this model; its groups are item_embeddings, "
                                          "item_biases, user_embeddings, user_biases"):
        finetune(config, quiet=True)


@needs_data
@pytest.mark.slow
def test_a_two_tower_model_gives_an_item_nobody_rated_a_vector_from_its_title(tmp_path):
    from tunesmith.run import finetune

    frame = pd.read_csv(DATA / "train.csv", dtype=str)
    frame.iloc[:3000].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[3000:3500].to_csv(tmp_path / "later.csv", index=False)
    items = pd.read_csv(DATA / "items.csv", dtype=str, keep_default_na=False)
    items[items["item_id"].isin(set(frame.iloc[:3500]["item_id"]))].to_csv(tmp_path / "items.csv", index=False)
    config = raw_config(tmp_path, "run", str(tmp_path / "train.csv"), str(tmp_path / "later.csv"),
                        items=str(tmp_path / "items.csv"), item_text_columns=["title", "genres"], factors=8)
    config["model"], config["training"]["num_train_epochs"] = {"source": "two-tower"}, 3
    result = finetune(config, quiet=True)
    facts = json.loads((result.run_dir / "data.json").read_text())
    assert facts["validation"]["rows_of_unknown_items"] == 0  # every later item has a row: the item file names it
    model = standalone(result.run_dir / "best")
    cold = sorted(set(frame.iloc[3000:3500]["item_id"]) - set(frame.iloc[:3000]["item_id"]))[:2]
    user = frame.iloc[0]["user_id"]
    first, second = model.score([user, user], cold)
    assert first != pytest.approx(second, abs=1e-4)  # unrated items differ by what their texts say


def test_an_update_of_a_recommender_holds_out_the_newest_rows_and_grows_the_tables(tmp_path):
    from tunesmith.comparison.update import update
    from tunesmith.run import finetune

    old = [f"u{n % 5},i{n % 7},{n % 5 + 1},{1000 + n}" for n in range(60)]
    config = {"task": "recommendation", "output_dir": str(tmp_path / "parent"), "data": {"train": _rows(tmp_path, old)},
              "training": {"num_train_epochs": 2, "dataloader_num_workers": 0}}
    parent = finetune(config, quiet=True)
    newer = tmp_path / "newer.csv"
    rows = [f"u{n % 8},i{n % 9},{n % 4 + 2},{5000 + n}" for n in range(40)]
    newer.write_text("user_id,item_id,rating,timestamp\n" + "\n".join(rows[::-1]) + "\n")  # newest first
    result = update(parent.run_dir, newer, tmp_path / "update", arms=("update",), quiet=True)
    held = pd.read_csv(next((tmp_path / "update" / "data").glob("new_validation.*")))
    kept = pd.read_csv(next((tmp_path / "update" / "data").glob("new_train.*")))
    assert held["timestamp"].min() > kept["timestamp"].max()  # the latest 10%, not a random draw
    spec = json.loads((tmp_path / "update" / "update" / "best" / "recommender.json").read_text())
    assert spec["parent_rows"] == [5, 7] and len(spec["users"]) == 8 and len(spec["items"]) == 9
    assert {a.arm for a in result.arms} == {"stale", "update"}


@needs_data
def test_new_items_fold_in_with_the_user_side_frozen(tmp_path):
    from safetensors.torch import load_file

    from tunesmith.run import evaluate, finetune

    frame = pd.read_csv(DATA / "train.csv", dtype=str)
    old, later = frame.iloc[:20000], frame.iloc[20000:40000]
    new_items = later[~later["item_id"].isin(set(old["item_id"])) & later["user_id"].isin(set(old["user_id"]))]
    fold, held = new_items.iloc[:len(new_items) * 2 // 3], new_items.iloc[len(new_items) * 2 // 3:]
    for name, part in (("old", old), ("fold", fold), ("held", held)):
        part.to_csv(tmp_path / f"{name}.csv", index=False)
    parent = finetune(raw_config(tmp_path, "parent", str(tmp_path / "old.csv"), str(tmp_path / "held.csv")), quiet=True)
    config = raw_config(tmp_path, "items", str(tmp_path / "fold.csv"), str(tmp_path / "held.csv"), update_ids="new")
    config["model"], config["strategy"] = {"source": str(parent.run_dir)}, {"freeze_groups": ["user_embeddings", "user_biases"]}
    config["training"].update(per_device_train_batch_size=128, num_train_epochs=5)
    folded = finetune(config, quiet=True)
    assert folded.final["rmse"] < evaluate(str(parent.run_dir), str(tmp_path / "held.csv"))["rmse"]
    before, after = (load_file(str(r.run_dir / "best" / "model.safetensors")) for r in (parent, folded))
    assert after["user_embeddings.weight"].equal(before["user_embeddings.weight"])  # frozen: not one user row moved
    assert after["item_biases.weight"].shape[0] > before["item_biases.weight"].shape[0]


def test_a_fine_tune_that_only_makes_the_parent_worse_keeps_the_parent(tmp_path):
    from tunesmith.run import finetune

    lines = [f"u{n % 6},i{n % 7},{(n * 7) % 5 + 1},{1000 + n}" for n in range(80)]
    config = {"task": "recommendation", "output_dir": str(tmp_path / "parent"), "data": {"train": _rows(tmp_path, lines)},
              "training": {"num_train_epochs": 3, "dataloader_num_workers": 0}}
    parent = finetune(config, quiet=True)
    wrecked = finetune({**config, "output_dir": str(tmp_path / "worse"), "model": {"source": str(parent.run_dir)},
                        "training": {"num_train_epochs": 3, "learning_rate": 50.0, "dataloader_num_workers": 0}}, quiet=True)
    assert wrecked.best_step == 0  # no epoch beat the start: best/ is the parent as it was
    assert wrecked.final["rmse"] == pytest.approx(wrecked.baseline["rmse"], rel=1e-6)
