"""Discriminative learning rates and the no-decay rule show up in the optimizer."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from tunesmith.models.layer_groups import transformer_layer_groups
from tunesmith.strategies.learning_rates import group_learning_rates, optimizer_param_groups


def test_rates_decay_going_down():
    assert group_learning_rates(4, 1e-3, 0.5) == pytest.approx([1.25e-4, 2.5e-4, 5e-4, 1e-3])


def test_optimizer_has_per_group_rates_and_no_decay_on_bias_and_norm():
    model = BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=32, vocab_size=100))
    groups = transformer_layer_groups(model)
    optimizer = torch.optim.AdamW(optimizer_param_groups(groups, 1e-3, 0.5, 0.01))
    by_name = {g["group_name"]: g for g in optimizer.param_groups}
    assert by_name["head"]["lr"] == pytest.approx(1e-3)
    assert by_name["block.1"]["lr"] == pytest.approx(5e-4)
    assert by_name["block.0"]["lr"] == pytest.approx(2.5e-4)
    assert by_name["embeddings"]["lr"] == pytest.approx(1.25e-4)
    assert by_name["embeddings.no_decay"]["weight_decay"] == 0.0
    assert by_name["embeddings"]["weight_decay"] == 0.01
    no_decay_ids = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    for name, p in model.named_parameters():
        if name.endswith("bias") or "LayerNorm" in name:
            assert id(p) in no_decay_ids, name
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
