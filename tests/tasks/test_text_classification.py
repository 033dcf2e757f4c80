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


def test_a_multi_megabyte_cell_is_cut_by_characters_before_tokenizing_and_counted(tiny_bert, recording_tokenizer):
    from tunesmith.data.labelled import LabelledRows
    from tunesmith.data.text_limits import char_limit
    from tunesmith.models.sources import token_limit

    task, _ = build(tiny_bert, True)
    task.tokenizer = recording_tokenizer(task.tokenizer)
    huge = "the film was long " * 300_000  # 5.4 MB in one cell
    rows = LabelledRows("mem", {"text": [huge, "short and sweet"]}, ["negative", "positive"], [2, 3])
    features = task.dataset(rows, train=True)
    max_length = token_limit(task.tokenizer.tokenizer, task.config.data.max_length)
    assert task.tokenizer.most_chars == char_limit(max_length) + len("short and sweet") < len(huge) // 100
    assert len(features[0]["input_ids"]) == max_length and task.truncated == 1
    assert features[0]["input_ids"] == task.tokenizer.tokenizer(huge[:100_000], truncation=True,
                                                                max_length=max_length)["input_ids"]


def test_fresh_head_only_where_the_head_starts_untrained_on_pretrained_weights(tiny_bert):
    task, _ = build(tiny_bert, True)
    assert not task.fresh_head  # tiny_bert was saved with a two-label head: it is kept
    task.label_names = ["a", "b", "c"]
    task.build_model()
    assert task.fresh_head  # a head of another size is drawn afresh
    task, _ = build(tiny_bert, False)
    assert not task.fresh_head  # from scratch, the features are not pre-trained either


def test_the_baseline_also_scores_minilm_features_with_a_linear_probe(tmp_path):
    import csv

    import tunesmith

    topics = {"sport": ["football", "tennis", "the marathon", "basketball", "the cycling race"],
              "food": ["pasta", "the soup", "fresh bread", "the curry", "chocolate cake"]}
    frames = ["I watched {} yesterday", "{} was the best part of my week", "we talked about {} for hours",
              "nothing beats {} on a sunday"]
    path = tmp_path / "topics.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([frame.format(thing), label] for label, things in topics.items()
                         for thing in things for frame in frames)
    config = {"output_dir": str(tmp_path / "run"), "model": {"source": "demo:minilm"},
              "data": {"train": str(path), "validation_split": 0.25, "max_length": 32},
              "training": {"max_steps": 1, "per_device_train_batch_size": 8}}
    features = tunesmith.finetune(config, quiet=True).baseline["features"]
    assert features["probe"] == "logistic regression" and features["train_rows"] == 30
    assert features["accuracy"] >= 0.9  # sentence embeddings keep topics apart before any training
