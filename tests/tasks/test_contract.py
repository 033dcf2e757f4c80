"""The task contract, checked for every registered task on a tiny model: a labelled batch gives a
finite loss, backward reaches every trainable parameter, evaluation outputs of batches of different
sizes and lengths stack, and a saved model loads back (`load_trained`) with the same outputs.

A new task module is picked up by `available_tasks()` and fails here until it has a case below.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tunesmith.config import load_config
from tunesmith.tasks import available_tasks, get_task

WORDS = ["apple", "river", "stone", "cloud", "forest", "candle"]


def jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def words(rng: np.random.Generator, n: int) -> list[str]:
    return [str(w) for w in rng.choice(WORDS, size=n)]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A 1-layer, 16-wide Llama with random weights and SmolLM2's real tokenizer and chat template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunesmith.models.sources import from_pretrained_kwargs, resolve_source

    folder = tmp_path_factory.mktemp("tiny-llama")
    source = resolve_source("demo:smollm2")
    tokenizer = AutoTokenizer.from_pretrained(source.location, **from_pretrained_kwargs(source, False))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id)
                     ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def case(name: str, request, tmp_path: Path) -> dict:
    """A run config for task `name` on a tiny model and a few rows written to `tmp_path`."""
    rng = np.random.default_rng(0)
    if name == "text-classification":
        rows = [{"text": " ".join(words(rng, int(rng.integers(2, 9)))), "label": str(rng.choice(["a", "b"]))}
                for _ in range(24)]
        return {"model": {"source": str(request.getfixturevalue("tiny_bert"))}, "data": {"train": jsonl(tmp_path / "t.jsonl", rows)}}
    if name == "token-classification":
        rows = []
        for _ in range(24):
            tokens = words(rng, int(rng.integers(2, 9)))
            rows.append({"tokens": tokens, "tags": ["B-X" if t == "river" else "O" for t in tokens]})
        return {"model": {"source": str(request.getfixturevalue("tiny_bert"))}, "data": {"train": jsonl(tmp_path / "t.jsonl", rows)}}
    if name == "question-answering":
        rows = []
        for _ in range(24):
            before, answer = " ".join(words(rng, int(rng.integers(2, 30)))), str(rng.choice(WORDS))
            rows.append({"question": "Which word follows code?", "context": f"{before} code {answer} end",
                         "answers": {"text": [answer], "answer_start": [len(before) + 6]}})
        return {"model": {"source": str(request.getfixturevalue("tiny_bert"))},
                "data": {"train": jsonl(tmp_path / "t.jsonl", rows), "max_length": 24}}  # long contexts: several windows
    if name == "seq2seq":
        rows = [{"source": " ".join(w), "target": " ".join(w[::-1])} for w in (words(rng, int(rng.integers(1, 6))) for _ in range(24))]
        return {"model": {"source": str(request.getfixturevalue("tiny_bart"))}, "data": {"train": jsonl(tmp_path / "t.jsonl", rows)},
                "seq2seq": {"max_new_tokens": 4}}
    if name == "causal-lm":
        rows = [{"prompt": f"Repeat: {w}", "response": w} for w in words(rng, 24)]
        return {"model": {"source": str(request.getfixturevalue("tiny_llama"))}, "data": {"train": jsonl(tmp_path / "t.jsonl", rows)},
                "causal_lm": {"max_new_tokens": 4}}
    if name == "image-classification":
        return {"model": {"source": "demo:efficientnet-lite0"},
                "data": {"train": str(request.getfixturevalue("color_images")), "image_size": 64}}
    pytest.fail(f"task {name!r} has no contract case in tests/tasks/test_contract.py; add one")


def outputs(task, model, rows) -> np.ndarray:
    """Evaluation outputs of `rows` in two batches of different sizes, stacked as the engine does."""
    data = task.dataset(rows, train=False)
    with torch.no_grad():
        batches = [[data[k] for k in range(i, j)] for i, j in ((0, 1), (1, min(len(data), 5)))]
        parts = [task.loss(model, task.collate(batch))[1] for batch in batches]
    return torch.cat(parts).float().numpy()


@pytest.mark.parametrize("name", available_tasks())
def test_task_contract(name, request, tmp_path):
    raw = {"task": name, "output_dir": str(tmp_path / "run"), **case(name, request, tmp_path)}
    raw["data"] = {"validation_split": 0.25, **raw["data"]}
    task = get_task(load_config(raw))
    task.preflight()
    torch.manual_seed(0)
    model = task.build_model()
    model.train()
    data = task.dataset(task.train_rows, train=True)
    loss, _ = task.loss(model, task.collate([data[i] for i in range(4)]))
    assert torch.isfinite(loss), loss
    loss.backward()
    unreached = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unreached, f"no gradient reaches {unreached[:5]}"

    model.eval()
    before = outputs(task, model, task.eval_rows)
    assert np.isfinite(before).all()
    task.save(model, str(tmp_path / "saved"))
    reloaded = get_task(load_config({**raw, "model": {**raw["model"], "source": str(tmp_path / "saved")}}))
    reloaded.train_rows, reloaded.eval_rows = task.train_rows, task.eval_rows
    again = reloaded.load_trained()
    again.eval()
    np.testing.assert_allclose(outputs(reloaded, again, task.eval_rows), before, rtol=1e-4, atol=1e-5)
