"""The `search` section: the space is checked against the schema when the config loads."""

from __future__ import annotations

import pytest

from tunesmith.config.search import parse_space
from tunesmith.config import load_config
from tunesmith.errors import ConfigError


def space(**entries) -> dict:
    return {"search": {"space": {key.replace("__", "."): value for key, value in entries.items()}}}


def problems(**entries) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(space(**entries))
    return str(err.value)


def test_ranges_and_choices_become_typed_spaces():
    config = load_config(space(training__learning_rate={"low": "1e-5", "high": 1e-3, "log": True},  # YAML's 1e-5 is a string
                               training__num_train_epochs={"low": 1, "high": 4, "step": 1},
                               strategy__freeze={"low": 0, "high": 4},
                               strategy__layer_lr_decay={"low": 0.6, "high": 1.0},
                               strategy__gradual_unfreezing={"choices": [True, False]},
                               augmentation__preset={"choices": ["none", "light", "strong"]},
                               lora__r={"choices": [4, 8, 16]}, lora__dropout={"low": 0.0, "high": 0.2}))
    spaces = {s.key: s for s in parse_space(config)[0]}
    assert spaces["training.learning_rate"].low == 1e-5 and spaces["training.learning_rate"].log
    assert not spaces["training.learning_rate"].integer
    assert spaces["training.num_train_epochs"].integer and spaces["strategy.freeze"].integer
    assert not spaces["strategy.layer_lr_decay"].integer
    assert spaces["augmentation.preset"].choices == ("none", "light", "strong")
    assert spaces["lora.r"].choices == (4, 8, 16) and not spaces["lora.dropout"].integer


def test_unknown_keys_get_the_nearest_valid_one():
    assert "did you mean 'training.learning_rate'?" in problems(training__learnig_rate={"low": 1e-5, "high": 1e-3})
    assert "did you mean 'training.learning_rate'?" in problems(learning_rate={"low": 1e-5, "high": 1e-3})
    assert "unknown key 'lora.rank'" in problems(lora__rank={"low": 4, "high": 64})
    assert "search.space.training.seed: unknown key 'lo'; did you mean 'low'?" in problems(
        training__seed={"lo": 1, "high": 3})


@pytest.mark.parametrize(("entry", "message"), [
    ({"low": 0.1, "high": 0.01}, "search.space.training.weight_decay: low (0.1) must be smaller than high (0.01)"),
    ({"low": 0, "high": 0.1, "log": True}, "search.space.training.weight_decay: a log range needs low > 0"),
    ({"choices": []}, "search.space.training.weight_decay: choices must be a non-empty list"),
    ({"low": 0.0, "high": 0.1, "choices": [0.0]}, "give either choices or a range"),
    ({"high": 0.1}, "a range needs low"),
    ({"low": 0.0, "high": "lots"}, "high must be a number"),
    (0.01, "give a mapping {low, high} or {choices: [...]}"),
])
def test_a_bad_range_names_its_key(entry, message):
    assert message in problems(training__weight_decay=entry)


def test_values_must_be_valid_for_the_key():
    assert "choice 'medium' is not valid for augmentation.preset" in problems(augmentation__preset={"choices": ["medium"]})
    assert "strategy.gradual_unfreezing is not numeric" in problems(strategy__gradual_unfreezing={"low": 0, "high": 1})
    assert "takes whole numbers" in problems(training__per_device_train_batch_size={"low": 4, "high": 12.5})


def test_every_problem_is_reported_at_once():
    message = problems(training__learnig_rate={"low": 1e-5, "high": 1e-3}, training__weight_decay={"low": 1, "high": 0})
    assert "learnig_rate" in message and "weight_decay" in message
