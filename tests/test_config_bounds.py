"""Every number checked before any weights load, task-owned sections, and hostile YAML.

The values below are the ones a hostile-user pass found accepted by `validate` and then crashing,
hanging or silently misbehaving in training (issue "Nothing deleted, nothing silently wrong").
"""

from __future__ import annotations

import pytest

from tunesmith.config import load_config, schema, task_schemas
from tunesmith.config._loading import MAX_YAML_ALIASES
from tunesmith.errors import ConfigError

BAD_VALUES = [
    ("training.learning_rate", float("nan")), ("training.learning_rate", float("inf")),
    ("training.num_train_epochs", float("nan")), ("training.num_train_epochs", 1e9),
    ("training.logging_steps", 0), ("training.seed", -1), ("training.seed", 2**32),
    ("training.adam_beta1", 5), ("training.adam_beta2", 1.0), ("training.warmup_ratio", 7),
    ("training.label_smoothing_factor", 3), ("data.max_train_samples", 0), ("data.max_eval_samples", 0),
    ("training.dataloader_num_workers", -1), ("training.max_grad_norm", -1), ("training.max_grad_norm", 0),
    ("training.save_total_limit", 0), ("training.save_total_limit", -2), ("training.max_steps", 0),
    ("training.max_steps", -5), ("training.save_steps", 0), ("training.eval_steps", 0),
    ("training.early_stopping_patience", 0), ("strategy.freeze", -1), ("model.dropout", 1.5),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=[f"{k}={v}" for k, v in BAD_VALUES])
def test_out_of_range_numbers_are_config_errors_naming_the_key(key, value):
    section, name = key.split(".")
    with pytest.raises(ConfigError) as err:
        load_config({section: {name: value}})
    assert key in str(err.value)


def test_every_bad_number_is_reported_at_once():
    raw = {"training": {"learning_rate": float("nan"), "seed": -1, "logging_steps": 0}, "data": {"max_train_samples": 0}}
    with pytest.raises(ConfigError) as err:
        load_config(raw)
    assert len(err.value.problems) == 4


def test_bounds_are_shown_in_the_reference():
    from tunesmith.config import reference_markdown

    assert "| `adam_beta1` | `0.9` | AdamW beta1. (≥ 0, < 1) |" in reference_markdown()


def test_yaml_off_and_no_read_as_the_documented_words(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  activation_cache: off\n  mixed_precision: no\n")
    config = load_config(path)
    assert (config.training.activation_cache, config.training.mixed_precision) == ("off", "no")


def test_a_real_boolean_field_stays_boolean():
    assert load_config({"training": {"group_by_length": False}}).training.group_by_length is False


def test_a_billion_laughs_file_is_refused_before_it_is_built(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=f"more than {MAX_YAML_ALIASES} YAML aliases"):
        load_config(path)


def test_a_huge_value_is_not_echoed_in_full():
    with pytest.raises(ConfigError) as err:
        load_config({"training": {"num_train_epochs": "x" * 100_000}})
    assert len(str(err.value)) < 500 and "100,002 characters" in str(err.value)


def test_each_task_owns_its_section_and_defaults():
    qa = load_config({"task": "question-answering"})
    assert qa.data.max_length == 384 and qa.metric == "f1" and qa.task_settings is qa.question_answering
    assert load_config({"task": "text-classification"}).data.max_length == 128
    assert load_config({"task": "question-answering", "data": {"max_length": 256}}).data.max_length == 256
    sections = {spec.section for spec in task_schemas().values() if spec.settings}
    assert sections <= set(schema().model_fields)


def test_a_key_moved_to_its_task_section_points_there():
    with pytest.raises(ConfigError, match="did you mean 'image_classification.image_size'"):
        load_config({"task": "image-classification", "data": {"image_size": 64}})


def test_metric_for_best_model_is_checked_against_the_task():
    with pytest.raises(ConfigError, match="unknown metric 'bleu' for text-classification; choose one of accuracy, "
                                          "macro_f1, roc_auc, loss"):
        load_config({"training": {"metric_for_best_model": "bleu"}})
    assert not load_config({"task": "seq2seq"}).greater_is_better


def test_a_demo_source_implies_its_task_when_none_is_set():
    from tunesmith.run import with_inferred_task

    assert with_inferred_task(load_config({"model": {"source": "demo:efficientnet-lite0"}})).task == "image-classification"
    assert with_inferred_task(load_config({"model": {"source": "demo:smollm2"}})).metric == "loss"
    kept = load_config({"task": "seq2seq", "model": {"source": "demo:minilm"}})
    assert with_inferred_task(kept).task == "seq2seq"
