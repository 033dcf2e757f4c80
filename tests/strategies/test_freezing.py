"""Freezing: frozen groups get no gradient and stay bit-identical; unfreezing follows the schedule."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from tunesmith.models.layer_groups import transformer_layer_groups
from tunesmith.strategies.freezing import apply_freezing, freeze_floor, trainable_from
from tunesmith.strategies.learning_rates import optimizer_param_groups


def tiny_model():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                                    intermediate_size=32, vocab_size=100, num_labels=2))


def train_step(model, groups):
    optimizer = torch.optim.AdamW(optimizer_param_groups(groups, 1e-2, 1.0, 0.01))
    batch = torch.randint(0, 100, (4, 8))
    loss = torch.nn.functional.cross_entropy(model(input_ids=batch).logits, torch.tensor([0, 1, 0, 1]))
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("freeze,frozen", [("none", 0), ("head_only", 4), (2, 2)])
def test_frozen_groups_get_no_gradient_and_stay_identical(freeze, frozen):
    model = tiny_model()
    groups = transformer_layer_groups(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_freezing(model, groups, freeze_floor(len(groups), freeze))
    train_step(model, groups)
    for index, group in enumerate(groups):
        for name, param in group.params:
            if index < frozen:
                assert param.grad is None, name
                assert torch.equal(param, before[name]), name
        if index >= frozen:
            assert any(not torch.equal(p, before[n]) for n, p in group.params), group.name


def test_frozen_groups_are_in_eval_mode():
    model = tiny_model()
    groups = transformer_layer_groups(model)
    apply_freezing(model, groups, 2)
    assert not groups[0].modules[0].training and not groups[1].modules[0].training
    assert groups[2].modules[0].training and model.classifier.training


def test_gradual_unfreezing_adds_one_group_per_epoch_from_the_top():
    # 5 groups: embeddings, 3 blocks, head
    assert [trainable_from(5, "none", True, e) for e in range(6)] == [4, 3, 2, 1, 0, 0]
    assert [trainable_from(5, 2, True, e) for e in range(5)] == [4, 3, 2, 2, 2]
    assert [trainable_from(5, "none", False, e) for e in range(3)] == [0, 0, 0]
    assert trainable_from(5, 99, False, 0) == 4  # the head always trains
