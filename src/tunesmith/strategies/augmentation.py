"""Image augmentation: the presets, mixup/cutmix, and the seeding that makes both repeat exactly.

Transforms are timm's own (`timm.data.create_transform`), fed the model's mean, std, input size,
crop fraction and interpolation from its pretrained config; evaluation resizes and centre-crops.
Every random draw is keyed on (seed, epoch, index): a sample's transform runs inside
`keyed_rng`, which seeds Python's, NumPy's and torch's generators for that one call and then
restores them, and a batch's mixup/cutmix draws come from a generator keyed on its first row.
A run therefore repeats bit for bit whatever the number of data-loader workers, and the
training loop's own random state (dropout, shuffling) is never disturbed.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tunesmith.config import AugmentationConfig


@dataclass(frozen=True)
class Preset:
    """One augmentation preset, in timm's argument names."""

    random_crop: bool
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.0
    auto_augment: str | None = None
    re_prob: float = 0.0
    weather: bool = False


PRESETS = {
    "none": Preset(random_crop=False),
    # A small photo set is easily over-fitted but also easily destroyed: crops keep most of the object.
    "light": Preset(random_crop=True, scale=(0.35, 1.0), hflip=0.5),
    # timm's ImageNet training recipe (RandAugment m9, random erasing 0.25).
    "strong": Preset(random_crop=True, scale=(0.08, 1.0), hflip=0.5, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25),
    "weather": Preset(random_crop=True, scale=(0.35, 1.0), hflip=0.5, weather=True),
}


class WeatherShift:
    """Shifted capture conditions on a PIL image, each drawn independently from Python's generator
    (which `keyed_rng` seeds per sample): low light or glare (brightness x0.4-1.3), lost contrast
    (x0.5-1.1), fog (a blend toward light grey, 15-50%), blur (Gaussian, radius 0.5-2: rain, defocus)
    and sensor noise (Gaussian, sigma 3-15 of 255). Pixels do not move, so masks and boxes stay put."""

    def __call__(self, image: Any) -> Any:
        from PIL import Image, ImageEnhance, ImageFilter

        if random.random() < 0.8:
            image = ImageEnhance.Brightness(image).enhance(random.uniform(0.4, 1.3))
        if random.random() < 0.5:
            image = ImageEnhance.Contrast(image).enhance(random.uniform(0.5, 1.1))
        if random.random() < 0.4:
            image = Image.blend(image, Image.new("RGB", image.size, (200, 200, 205)), random.uniform(0.15, 0.5))
        if random.random() < 0.3:
            image = image.filter(ImageFilter.GaussianBlur(random.uniform(0.5, 2.0)))
        if random.random() < 0.3:
            pixels = np.asarray(image, dtype=np.float32)
            noise = np.random.default_rng(random.getrandbits(32)).normal(0, random.uniform(3, 15), pixels.shape)
            image = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
        return image


def eval_transform(data_config: dict[str, Any]) -> Callable:
    """Resize to input size / crop_pct, centre crop, normalize with the model's mean and std."""
    from timm.data import create_transform

    return create_transform(**data_config, is_training=False)


def train_transform(data_config: dict[str, Any], aug: AugmentationConfig) -> Callable:
    """The preset's random transforms, with `auto_augment` and `re_prob` overriding it when set and
    `hflip: false` taking the preset's flip out."""
    from timm.data import create_transform
    from torchvision import transforms

    preset = PRESETS[aug.preset]
    if not preset.random_crop:
        return eval_transform(data_config)
    policy = preset.auto_augment if aug.auto_augment is None else aug.auto_augment
    policy = None if policy in ("none", "") else policy
    primary, secondary, final = create_transform(
        input_size=data_config["input_size"], is_training=True, scale=preset.scale, hflip=preset.hflip if aug.hflip else 0.0,
        color_jitter=None,  # type: ignore[arg-type]  # timm reads None as no jitter; its hint omits None
        auto_augment=None if policy == "trivial" else policy,
        interpolation=data_config["interpolation"], mean=data_config["mean"], std=data_config["std"],
        re_prob=preset.re_prob if aug.re_prob is None else aug.re_prob, re_mode="pixel", separate=True)
    steps = [primary, *([WeatherShift()] if preset.weather else []), secondary, final]
    if policy == "trivial":
        steps.insert(1, transforms.TrivialAugmentWide(interpolation=transforms.InterpolationMode.BICUBIC))
    return transforms.Compose(steps)


def key_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from integers such as (seed, epoch, index)."""
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1)[0])


@contextlib.contextmanager
def keyed_rng(*parts: int) -> Iterator[None]:
    """Seeds Python, NumPy and torch (CPU) from `parts` inside the block, restoring them after.

    timm's and torchvision's transforms draw from these global generators; seeding them per sample
    makes each sample's augmentation a pure function of its key.
    """
    seed = key_seed(*parts)
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def mixes(aug: AugmentationConfig) -> bool:
    return aug.mixup_alpha > 0 or aug.cutmix_alpha > 0


def is_random(aug: AugmentationConfig) -> bool:
    """Whether training images differ from epoch to epoch (preset `none` without mixing does not)."""
    return PRESETS[aug.preset].random_crop or mixes(aug)


def mix_batch(pixels: torch.Tensor, labels: torch.Tensor, num_classes: int, aug: AugmentationConfig,
              smoothing: float, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix of a batch with itself reversed (timm's batch mode).

    Args:
        pixels: (B, C, H, W) normalized images.
        labels: (B,) class ids.
        smoothing: label smoothing applied to the targets before mixing.
        rng: draws lambda, the choice between mixup and cutmix, and the cutmix box.

    Returns:
        Mixed (B, C, H, W) images and (B, num_classes) soft targets.
    """
    off = smoothing / num_classes
    targets = torch.full((len(labels), num_classes), off).scatter_(1, labels[:, None], 1.0 - smoothing + off)
    use_cutmix = aug.cutmix_alpha > 0 and (aug.mixup_alpha <= 0 or rng.random() < 0.5)
    alpha = aug.cutmix_alpha if use_cutmix else aug.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    partner = pixels.flip(0)
    if use_cutmix:
        height, width = pixels.shape[-2:]
        cut_h, cut_w = int(height * np.sqrt(1 - lam)), int(width * np.sqrt(1 - lam))
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        pixels = pixels.clone()
        pixels[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)  # the box as clipped
    else:
        pixels = pixels * lam + partner * (1.0 - lam)
    return pixels, targets * lam + targets.flip(0) * (1.0 - lam)
