"""Model sources: demo aliases resolve to the shipped weights; model.dropout reaches every dropout setting."""

from __future__ import annotations

import pytest

from tunesmith.errors import ModelSourceError
from tunesmith.models.sources import dropout_overrides, from_pretrained_kwargs, resolve_source


def test_dropout_overrides_cover_every_dropout_setting_of_the_config():
    resolved = resolve_source("demo:minilm")
    overrides = dropout_overrides(resolved, 0.3)
    # BERT names its dropouts *_dropout_prob, and the head's classifier_dropout is null by default.
    assert overrides == {"hidden_dropout_prob": 0.3, "attention_probs_dropout_prob": 0.3, "classifier_dropout": 0.3}
    assert dropout_overrides(resolved, None) == {}


def test_local_sources_never_touch_the_network():
    resolved = resolve_source("demo:minilm")
    assert resolved.local and from_pretrained_kwargs(resolved, False)["local_files_only"] is True


def test_unknown_demo_lists_the_available_ones():
    with pytest.raises(ModelSourceError, match="demo:minilm"):
        resolve_source("demo:nope")
