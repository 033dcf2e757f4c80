"""Multi-label classification: label cells split into sets, sigmoid heads, micro/macro F1, and a real run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import tunesmith
from tunesmith.config import load_config
from tunesmith.errors import DataError
from tunesmith.tasks import get_task

TOPICS = {"goal": "sport", "match": "sport", "vote": "politics", "law": "politics", "rain": "weather", "storm": "weather"}


def topic_rows(n: int, seed: int = 0) -> list[dict]:
    """Texts of two to four words; a row's labels are the topics of its words (or none for filler only)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        words = [str(w) for w in rng.choice([*TOPICS, "the", "a", "today"], size=int(rng.integers(2, 5)))]
        labels = sorted({TOPICS[w] for w in words if w in TOPICS})
        rows.append({"text": " ".join(words), "label": "|".join(labels) or "none"})
    return rows


def write_csv(path: Path, rows: list[dict]) -> str:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_label_cells_become_sets_and_multi_hot_vectors(tiny_bert, tmp_path):
    config = load_config({"task": "multi-label-classification", "model": {"source": str(tiny_bert)},
                          "data": {"train": write_csv(tmp_path / "t.csv", topic_rows(40))}})
    task = get_task(config)
    task.preflight()
    assert task.label_names == ["politics", "sport", "weather"]
    assert task.split("sport| politics") == ["sport", "politics"] and task.split("none") == []
    task.build_model()
    feature = task.dataset(task.train_rows.subset([0]), train=True)[0]
    expected = [int(n in task.split(task.train_rows.labels[0])) for n in task.label_names]
    assert feature["labels"] == expected


def test_metrics_are_micro_and_macro_f1_and_subset_accuracy(tiny_bert, tmp_path):
    config = load_config({"task": "multi-label-classification", "model": {"source": str(tiny_bert)},
                          "data": {"train": write_csv(tmp_path / "t.csv", topic_rows(40))}})
    task = get_task(config)
    task.preflight()
    names = task.label_names
    rows = task.eval_rows.subset([0, 1])
    rows.labels = [names[0], f"{names[1]}|{names[2]}"]  # labels [1, 0, 0] and [0, 1, 1]
    logits = [np.array([3.0, -3.0, -3.0]), np.array([-3.0, 3.0, -3.0])]  # the second row misses one label
    m = task.metrics(rows, logits)
    assert m["subset_accuracy"] == 0.5 and m["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1))
    assert config.metric == "micro_f1" and config.greater_is_better


def test_unseen_validation_labels_are_refused_with_their_names(tiny_bert, tmp_path):
    val = write_csv(tmp_path / "v.csv", [{"text": "snow", "label": "winter|sport"}])
    config = load_config({"task": "multi-label-classification", "model": {"source": str(tiny_bert)},
                          "data": {"train": write_csv(tmp_path / "t.csv", topic_rows(40)), "validation": val}})
    with pytest.raises(DataError, match="labels not seen in training: winter"):
        get_task(config).preflight()


def test_train_predict_round_trip(tiny_bert, tmp_path):
    raw = {"task": "multi-label-classification", "output_dir": str(tmp_path / "run"), "model": {"source": str(tiny_bert)},
           "data": {"train": write_csv(tmp_path / "t.csv", topic_rows(64))},
           "training": {"num_train_epochs": 2, "learning_rate": 1e-3, "per_device_train_batch_size": 16}}
    result = tunesmith.finetune(raw, quiet=True)
    assert set(result.final) >= {"micro_f1", "macro_f1", "subset_accuracy", "loss"}
    saved = json.loads((result.best_model_dir / "config.json").read_text())
    assert saved["problem_type"] == "multi_label_classification"
    out = tunesmith.predict(str(result.run_dir), write_csv(tmp_path / "p.csv", topic_rows(5, seed=1)),
                            str(tmp_path / "p.jsonl"))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 5 and {"predicted_label", "prob_sport", "text", "line"} <= set(records[0])


@pytest.mark.slow
def test_real_entity_types_are_learned_from_conll(shared_data, tmp_path):
    """CoNLL-2003 sentences labelled with the entity types they mention (PER, ORG, LOC, MISC): the
    real MiniLM goes from an untrained head to a useful tagger of sentence topics in one short run."""
    def rows(split: str, limit: int) -> list[dict]:
        out, words, types = [], [], set()
        for line in (shared_data / "conll2003" / f"{split}.txt").read_text(encoding="utf-8").splitlines() + [""]:
            if not line.strip() or line.startswith("-DOCSTART-"):
                if words:
                    out.append({"text": " ".join(words), "label": "|".join(sorted(types)) or "none"})
                words, types = [], set()
            else:
                parts = line.split()
                words.append(parts[0])
                if parts[-1] != "O":
                    types.add(parts[-1].split("-", 1)[1])
        return out[:limit]

    raw = {"task": "multi-label-classification", "output_dir": str(tmp_path / "run"),
           "data": {"train": write_csv(tmp_path / "t.csv", rows("train", 1200)),
                    "validation": write_csv(tmp_path / "v.csv", rows("dev", 300)), "max_length": 64},
           "training": {"num_train_epochs": 3, "learning_rate": 5e-4, "per_device_train_batch_size": 32}}
    result = tunesmith.finetune(raw, quiet=True)
    # Measured: micro-F1 0.431 -> 0.636, subset accuracy 0.053 -> 0.437; after the sampler kept the short
    # step last (another batch order, same seed) 0.431 -> 0.564 and 0.37, still rising each epoch: three
    # epochs are short and the order moves the result. Predicting every type scores ~0.45.
    assert result.final["micro_f1"] > result.baseline["micro_f1"] + 0.1
    assert result.final["micro_f1"] > 0.52 and result.final["subset_accuracy"] > 0.3


def contract_case(request, make) -> dict:
    """The task contract's case (tests/tasks/test_contract.py): a tiny BERT, labels from word topics."""
    rows = [{"text": r["text"], "label": r["label"]} for r in topic_rows(24)]
    return {"model": {"source": str(request.getfixturevalue("tiny_bert"))}, "data": {"train": make.jsonl(rows)}}
