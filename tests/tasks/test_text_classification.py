"""Text classification: `model.pretrained: false` builds the same architecture from random weights."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from tunesmith.config import load_config
from tunesmith.tasks import get_task


def build(tiny_bert, pretrained: bool, seed: int = 1):
    # Not seed 0: the tiny_bert fixture itself was drawn from random initialization with seed 0.
    config = load_config({"model": {"source": str(tiny_bert), "pretrained": pretrained}})
    task = get_task(config)
    task.label_names = ["negative", "positive"]
    torch.manual_seed(seed)
    return task, task.build_model()


def test_pretrained_false_keeps_the_architecture_and_tokenizer_but_not_the_weights(tiny_bert):
    saved = load_file(str(tiny_bert / "model.safetensors"))
    _, pretrained = build(tiny_bert, True)
    task, scratch = build(tiny_bert, False)
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(pretrained.state_dict()[key], saved[key])
    assert not torch.equal(scratch.state_dict()[key], saved[key])
    assert {k: v.shape for k, v in scratch.state_dict().items()} == {k: v.shape for k, v in pretrained.state_dict().items()}
    assert scratch.config.id2label == {0: "negative", 1: "positive"}
    assert task.tokenizer is not None and task.tokenizer("a test")["input_ids"][0] == task.tokenizer.cls_token_id


def test_random_initialization_follows_the_seed(tiny_bert):
    key = "bert.encoder.layer.0.attention.self.query.weight"
    first, again, other = (build(tiny_bert, False, seed)[1].state_dict()[key] for seed in (1, 1, 2))
    assert torch.equal(first, again) and not torch.equal(first, other)


def contract_case(request, make) -> dict:
    """The task contract's case (tests/tasks/test_contract.py): a tiny BERT on random two-label rows."""
    rows = [{"text": " ".join(make.words(int(make.rng.integers(2, 9)))), "label": str(make.rng.choice(["a", "b"]))}
            for _ in range(24)]
    return {"model": {"source": str(request.getfixturevalue("tiny_bert"))}, "data": {"train": make.jsonl(rows)}}
