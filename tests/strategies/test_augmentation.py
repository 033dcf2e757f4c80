"""Augmentation: presets, per-sample keyed randomness (repeatable with any workers), mixup and cutmix."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tunesmith.config import AugmentationConfig
from tunesmith.data.images import ImageDataset, read_images
from tunesmith.engine.batching import make_loader
from tunesmith.strategies.augmentation import WeatherShift, eval_transform, keyed_rng, mix_batch, train_transform

DATA_CONFIG = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
               "std": (0.5, 0.5, 0.5), "crop_pct": 0.875, "crop_mode": "center"}


def dataset(color_images, preset="strong", seed=3, **aug):
    rows = read_images(color_images, "image", "label", None, "skip")
    transform = train_transform(DATA_CONFIG, AugmentationConfig(preset=preset, **aug))
    return ImageDataset(rows.inputs["image"][:8], list(range(8)), transform, seed=seed)


def test_keyed_rng_is_repeatable_and_leaves_global_state_alone():
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    expected = (torch.rand(1), random.random(), np.random.rand())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    with keyed_rng(1, 2, 3):
        first = (torch.rand(1), random.random(), np.random.rand())
    with keyed_rng(1, 2, 3):
        again = (torch.rand(1), random.random(), np.random.rand())
    with keyed_rng(1, 2, 4):
        other = torch.rand(1)
    assert first == again and other != first[0]
    assert (torch.rand(1), random.random(), np.random.rand()) == expected


@pytest.mark.parametrize("preset", ["none", "light", "strong", "weather"])
def test_presets_give_the_model_input_size(color_images, preset):
    item = dataset(color_images, preset)[0]
    assert item["pixel_values"].shape == (3, 32, 32) and item["pixel_values"].dtype == torch.float32


def test_weather_shifts_conditions_repeatably_without_moving_pixels():
    from PIL import Image

    rng = np.random.default_rng(0)
    scene = np.zeros((48, 64, 3), dtype=np.uint8)
    scene[10:30, 20:40] = rng.integers(150, 255, size=(20, 20, 3))  # a bright object on a dark road
    image = Image.fromarray(scene)
    shifted = []
    for key in range(12):
        with keyed_rng(0, 0, key):
            shifted.append(np.asarray(WeatherShift()(image), dtype=np.float32))
    with keyed_rng(0, 0, 3):
        assert np.array_equal(np.asarray(WeatherShift()(image), dtype=np.float32), shifted[3])  # keyed: repeats
    brightness = [s.mean() for s in shifted]
    assert max(brightness) - min(brightness) > 10  # darker and foggier versions of one scene
    for s in shifted:  # conditions change, geometry does not: the object stays where it was
        inside, outside = s[12:28, 22:38].mean(), np.concatenate([s[:, :10].ravel(), s[:, 50:].ravel()]).mean()
        assert inside > outside + 20


def test_trivial_augment_and_overrides(color_images):
    data = dataset(color_images, "light", auto_augment="trivial", re_prob=1.0)
    assert data[0]["pixel_values"].shape == (3, 32, 32)
    assert "TrivialAugmentWide" in repr(data.transform) and "RandomErasing" in repr(data.transform)
    assert "RandAugment" not in repr(train_transform(DATA_CONFIG, AugmentationConfig(preset="strong", auto_augment="none")))


@pytest.mark.parametrize("preset", ["light", "strong"])
def test_hflip_false_takes_the_flip_out_of_the_preset(preset):
    flips = repr(train_transform(DATA_CONFIG, AugmentationConfig(preset=preset)))
    kept = repr(train_transform(DATA_CONFIG, AugmentationConfig(preset=preset, hflip=False)))
    assert "RandomHorizontalFlip" in flips and "RandomHorizontalFlip" not in kept
    assert "RandomResizedCrop" in kept  # only the flip goes: the rest of the preset stays


def test_augmentation_is_keyed_on_seed_epoch_and_index(color_images):
    data = dataset(color_images)
    first = data[2]["pixel_values"]
    assert torch.equal(first, data[2]["pixel_values"])  # same (seed, epoch, index)
    data.set_epoch(1)
    assert not torch.equal(first, data[2]["pixel_values"])  # a new epoch draws anew
    assert not torch.equal(dataset(color_images, seed=4)[2]["pixel_values"], first)


def test_same_batches_with_and_without_workers(color_images):
    def batches(workers):
        data = dataset(color_images)
        data.set_epoch(2)
        loader = make_loader(data, lambda f: torch.stack([x["pixel_values"] for x in f]), 4, seed=0, train=True,
                             num_workers=workers)
        return list(loader)

    for a, b in zip(batches(0), batches(2)):
        assert torch.equal(a, b)


def test_evaluation_resizes_and_centre_crops(color_images):
    transform = eval_transform(DATA_CONFIG)
    names = [type(t).__name__ for t in transform.transforms]
    assert names[:2] == ["Resize", "CenterCrop"]


def test_mixup_targets_are_distributions():
    pixels, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
    mixed, targets = mix_batch(pixels, labels, 3, AugmentationConfig(mixup_alpha=0.4), 0.1, np.random.default_rng(0))
    assert targets.shape == (4, 3) and torch.allclose(targets.sum(1), torch.ones(4))
    lam = float(targets[0, 0] - 0.1 / 3) / (1 - 0.1)  # row 0 is label 0 mixed with row 3 (label 1)
    assert torch.allclose(mixed[0], lam * pixels[0] + (1 - lam) * pixels[3], atol=1e-5)


def test_cutmix_pastes_a_box_and_weights_by_its_area():
    pixels, labels = torch.zeros(2, 1, 10, 10), torch.tensor([0, 1])
    pixels[1] = 1.0
    mixed, targets = mix_batch(pixels, labels, 2, AugmentationConfig(cutmix_alpha=1.0), 0.0, np.random.default_rng(1))
    pasted = float(mixed[0].mean())  # fraction of row 0 now showing row 1
    assert 0 < pasted < 1
    assert targets[0].tolist() == pytest.approx([1 - pasted, pasted])
