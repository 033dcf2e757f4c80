"""The frozen-prefix activation cache gives the same run as no cache, and really skips the prefix."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

import tunesmith


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["phase"], r["step"], r.get("train_loss"), r.get("loss")) for r in rows]


@pytest.mark.parametrize("freeze", [1, 2])
def test_cached_run_equals_uncached_run(tiny_config, tmp_path, caplog, freeze):
    caplog.set_level(logging.INFO, logger="tunesmith")
    tiny_config["training"].update(num_train_epochs=3, early_stopping_patience=None, learning_rate=3e-3)
    tiny_config["strategy"] = {"freeze": freeze}
    tiny_config["model"]["dropout"] = 0.1  # dropout in the trained top must draw the same masks
    cached = tunesmith.finetune(tiny_config, quiet=True).run_dir
    assert "activation cache:" in caplog.text
    tiny_config["output_dir"] = str(tmp_path / "uncached")
    tiny_config["training"]["activation_cache"] = "off"
    uncached = tunesmith.finetune(tiny_config, quiet=True).run_dir
    for a, b in zip(losses(cached), losses(uncached), strict=True):
        assert a[:2] == b[:2]
        for x, y in zip(a[2:], b[2:]):
            assert x == y if y is None else x == pytest.approx(y, rel=1e-5, abs=1e-6)
    one, two = load_file(str(cached / "best" / "model.safetensors")), load_file(str(uncached / "best" / "model.safetensors"))
    assert all(torch.allclose(one[k], two[k], atol=1e-5) for k in one)


def test_a_cache_on_disk_replays_and_leaves_no_file(tiny_config, caplog):
    caplog.set_level(logging.INFO, logger="tunesmith")
    tiny_config["training"].update(num_train_epochs=2, activation_cache_max_gb=1e-6)
    tiny_config["strategy"] = {"freeze": 2}
    run_dir = tunesmith.finetune(tiny_config, quiet=True).run_dir
    assert "MB on disk" in caplog.text
    assert not list(run_dir.rglob("*.f32"))


def test_replayed_epochs_skip_the_frozen_prefix(tiny_config, monkeypatch):
    from transformers.models.bert.modeling_bert import BertEmbeddings

    calls = {"train": 0}
    original = BertEmbeddings.forward

    def counting(self, *args, **kwargs):
        if torch.is_grad_enabled():  # training forward passes (evaluation runs under no_grad)
            calls["train"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BertEmbeddings, "forward", counting)
    tiny_config["training"].update(num_train_epochs=3, early_stopping_patience=None)
    tiny_config["strategy"] = {"freeze": 2}
    tunesmith.finetune(tiny_config, quiet=True)
    assert calls["train"] == 6  # 6 batches in the recording epoch, none in the two replayed epochs


def test_cache_is_off_with_gradual_unfreezing_that_never_settles(tiny_config, caplog):
    caplog.set_level(logging.INFO, logger="tunesmith")
    tiny_config["training"].update(num_train_epochs=3)
    tiny_config["strategy"] = {"gradual_unfreezing": True}  # 4 groups: frozen prefix 3, 2, 1
    tunesmith.finetune(tiny_config, quiet=True)
    assert "activation cache:" not in caplog.text


def test_frozen_image_backbone_is_cached_without_augmentation(image_config, tmp_path, caplog, monkeypatch):
    """EfficientNet-Lite0 with only the head training and augmentation `none`: later epochs neither
    decode images nor run the backbone, and the run equals the uncached one."""
    from tunesmith.data import images

    decoded = []
    original = images.open_rgb
    monkeypatch.setattr(images, "open_rgb", lambda path: decoded.append(path) or original(path))
    caplog.set_level(logging.INFO, logger="tunesmith")
    image_config["training"].update(num_train_epochs=3, early_stopping_patience=None)
    image_config["strategy"] = {"freeze": "head_only"}
    image_config["augmentation"] = {"preset": "none"}
    cached = tunesmith.finetune(image_config, quiet=True)
    assert "activation cache: stem" in caplog.text and "activation cache off" not in caplog.text
    reads_cached = len(decoded)
    decoded.clear()
    image_config["output_dir"] = str(tmp_path / "uncached")
    image_config["training"]["activation_cache"] = "off"
    uncached = tunesmith.finetune(image_config, quiet=True)
    assert len(decoded) - reads_cached == 2 * 18  # the 18 training images, not decoded in the 2 replayed epochs
    assert "with augmentation.preset: none" not in caplog.text
    for a, b in zip(losses(cached.run_dir), losses(uncached.run_dir), strict=True):
        assert a[:2] == b[:2]
        for x, y in zip(a[2:], b[2:]):
            assert x == y if y is None else x == pytest.approx(y, rel=1e-4, abs=1e-6)
    one = load_file(str(cached.run_dir / "best" / "model.safetensors"))
    two = load_file(str(uncached.run_dir / "best" / "model.safetensors"))
    assert all(torch.allclose(one[k], two[k], atol=1e-5) for k in one)


def test_cache_turns_itself_off_when_a_module_outside_the_groups_sits_between_them(tmp_path, color_images, caplog):
    """timm's ResNet runs its stem's activation and max-pool (no parameters, in no group) between the
    stem and stage 0: replaying stage 0's output there would pool it again. The first recorded batch
    finds that out and the run goes on uncached, equal to a run without the cache."""
    caplog.set_level(logging.INFO, logger="tunesmith")
    config = {"task": "image-classification", "output_dir": str(tmp_path / "cached"),
              "model": {"source": "resnet10t", "pretrained": False},
              "data": {"train": str(color_images), "validation_split": 0.25}, "image_classification": {"image_size": 32},
              "training": {"num_train_epochs": 2, "per_device_train_batch_size": 6, "early_stopping_patience": None,
                           "dataloader_num_workers": 0},
              "strategy": {"freeze": 2}, "augmentation": {"preset": "none"}}
    cached = tunesmith.finetune(config, quiet=True).run_dir
    assert "stage.1 does not get the input it gets in the real forward" in caplog.text
    config["output_dir"], config["training"]["activation_cache"] = str(tmp_path / "uncached"), "off"
    assert losses(cached) == losses(tunesmith.finetune(config, quiet=True).run_dir)


def test_with_augmentation_the_log_says_how_to_get_the_cache(image_config, caplog):
    caplog.set_level(logging.INFO, logger="tunesmith")
    image_config["strategy"] = {"freeze": "head_only"}  # augmentation: the default preset, light
    tunesmith.finetune(image_config, quiet=True)
    assert "activation cache off: training inputs change between epochs" in caplog.text
    assert "with augmentation.preset: none, epochs after the first would skip" in caplog.text
