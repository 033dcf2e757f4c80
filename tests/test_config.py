"""Config loading: schema validation, did-you-mean, overrides, cross-field rules."""

from __future__ import annotations

import pytest

from tunesmith.config import RunConfig, dump_config, load_config
from tunesmith.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_are_valid():
    config = load_config()
    assert config.model.source == "demo:minilm"
    assert config.warmup == (0.1, None)


def test_misspelled_key_names_the_nearest_valid_key(tmp_path):
    path = write(tmp_path, "training:\n  learnig_rate: 1e-4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "training.learnig_rate" in str(err.value)
    assert "did you mean 'learning_rate'" in str(err.value)


def test_training_key_at_top_level_points_to_its_section(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'training.num_train_epochs'"):
        load_config(write(tmp_path, "num_train_epochs: 3\n"))


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "training:\n  num_train_epochs: three\n"))
    assert "training.num_train_epochs" in str(err.value) and "'three'" in str(err.value)


def test_all_problems_are_reported_at_once(tmp_path):
    path = write(tmp_path, "training:\n  learnig_rate: 1e-4\n  seed: abc\ndata:\n  max_lenght: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert len(err.value.problems) == 3


def test_contradictory_warmup_keys(tmp_path):
    with pytest.raises(ConfigError, match="warmup_ratio and training.warmup_steps are both set"):
        load_config({"training": {"warmup_ratio": 0.1, "warmup_steps": 10}})


def test_unknown_metric_lists_choices():
    with pytest.raises(ConfigError, match="choose one of accuracy, macro_f1, roc_auc, loss"):
        load_config({"training": {"metric_for_best_model": "f1"}})


def test_overrides_dotted_and_bare_keys_parse_yaml_values():
    config = load_config(None, ["training.learning_rate=1e-4", "num_train_epochs=2", "strategy.freeze=3",
                                "data.text_pair_column=hypothesis"])
    assert config.training.learning_rate == 1e-4
    assert config.training.num_train_epochs == 2
    assert config.strategy.freeze == 3
    assert config.data.text_pair_column == "hypothesis"


def test_override_with_typo_is_rejected():
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        load_config(None, ["training.learning_rat=1e-4"])


def test_malformed_yaml_names_line(tmp_path):
    with pytest.raises(ConfigError, match="line 2"):
        load_config(write(tmp_path, "training:\n\tseed: 1\n"))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["strategy.layer_lr_decay=0.8", "strategy.freeze=head_only"])
    dump_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config
    assert isinstance(config, RunConfig)


def test_shipped_examples_validate():
    from pathlib import Path

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
    assert examples, "examples/ should ship at least one config"
    for path in examples:
        load_config(path)
