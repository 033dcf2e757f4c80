"""Shared fixtures: a tiny BERT, BART and Llama built from configs (no download), the shipped reviews, shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Precision `auto` computes in bf16 on CPUs with bf16 matrix instructions (AMX, AVX512-BF16): the suite
# computes alike on every CI machine in fp32 (golden losses, parity checks), and subprocesses inherit it.
# tests/engine/test_accelerator.py fakes the probe both ways and runs a fine-tune in bf16;
# TUNESMITH_CPU_BF16=1 pytest ... runs tests in bf16 by hand (golden losses then differ, as they should).
os.environ.setdefault("TUNESMITH_CPU_BF16", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_addoption(parser):
    parser.addoption("--skip-slow", action="store_true", help="skip end-to-end tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--skip-slow"):
        skip = pytest.mark.skip(reason="--skip-slow given")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and the real MiniLM tokenizer, saved locally."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tunesmith.models.sources import resolve_source

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_source("demo:minilm").location).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bart(tmp_path_factory) -> Path:
    """A 2+2-layer, 32-wide BART with random weights and the real MiniLM (BERT) tokenizer's special ids."""
    import torch
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    from tunesmith.models.sources import resolve_source

    folder = tmp_path_factory.mktemp("tiny-bart")
    torch.manual_seed(0)
    config = BartConfig(vocab_size=30522, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                        pad_token_id=0, bos_token_id=101, eos_token_id=102, decoder_start_token_id=101,
                        forced_bos_token_id=None, forced_eos_token_id=None)
    BartForConditionalGeneration(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_source("demo:minilm").location).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def reviews() -> Path:
    from tunesmith.quickstart import reviews_path

    return Path(reviews_path())


@pytest.fixture
def tiny_config(tiny_bert, reviews, tmp_path) -> dict:
    """A fast run config on the tiny model and the shipped reviews."""
    return {
        "output_dir": str(tmp_path / "run"),
        "model": {"source": str(tiny_bert)},
        "data": {"train": str(reviews), "max_train_samples": 96, "max_eval_samples": 32, "max_length": 32},
        "training": {"num_train_epochs": 2, "per_device_train_batch_size": 16, "learning_rate": 1e-3,
                     "logging_steps": 1},
    }


@pytest.fixture(scope="session")
def color_images(tmp_path_factory) -> Path:
    """A folder of small synthetic photos in two learnable classes: `red/` and `blue/`, 12 each."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("color-images")
    rng = np.random.default_rng(0)
    for name, channel in (("red", 0), ("blue", 2)):
        (folder / name).mkdir()
        for i in range(12):
            pixels = rng.integers(0, 120, size=(40 + i, 48, 3), dtype=np.uint8)
            pixels[..., channel] += 120
            Image.fromarray(pixels).save(folder / name / f"{name}{i}.jpg", quality=90)
    return folder


@pytest.fixture
def image_config(color_images, tmp_path) -> dict:
    """A fast image run: the real EfficientNet-Lite0 weights at 64 px on `color_images`."""
    return {
        "task": "image-classification",
        "output_dir": str(tmp_path / "run"),
        "model": {"source": "demo:efficientnet-lite0"},
        "data": {"train": str(color_images), "validation_split": 0.25}, "image_classification": {"image_size": 64},
        "training": {"num_train_epochs": 2, "per_device_train_batch_size": 6, "learning_rate": 5e-3,
                     "logging_steps": 1, "dataloader_num_workers": 0},
    }


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 1-layer, 16-wide Llama with random weights and SmolLM2's real tokenizer and chat template."""
    import torch
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


def _chars(value) -> int:
    """Characters in a text, or in all the texts of (nested) lists of them."""
    if isinstance(value, str):
        return len(value)
    return sum(_chars(v) for v in value) if isinstance(value, (list, tuple)) else 0


class RecordingTokenizer:
    """A real tokenizer that notes the most characters any one call was handed (all its texts together)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.most_chars = tokenizer, 0

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, *args, **kwargs):
        self.most_chars = max(self.most_chars, _chars(list(args) + [kwargs.get("text_target") or []]))
        return self.tokenizer(*args, **kwargs)


@pytest.fixture
def recording_tokenizer():
    """Wraps a tokenizer to check it is never handed a huge text whole (`data/text_limits.py`)."""
    return RecordingTokenizer
