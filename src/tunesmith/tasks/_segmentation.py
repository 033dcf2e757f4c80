"""What image segmentation needs beside its task file: paired transforms, the dataset, batches, masks out.

Training pairs get the augmentation preset with torchvision's `transforms.v2`, which moves a
`tv_tensors.Mask` with the pixels (nearest-neighbour resize, the same crop and flips): `light`
rescales by a random factor in `scale_range`, crops `crop_size` squares (padding what is smaller
with the ignore value) and flips; `strong` adds colour jitter; `weather` adds shifted conditions
(`strategies.augmentation.WeatherShift`: low light, fog, blur, noise) to the image alone. `none` trains on whole images, as
evaluation does. Every draw is keyed on (seed, epoch, index) like the other image tasks'. A batch of
whole images of different sizes is padded to its largest (pixels 0 after normalisation, the mean;
masks 255, ignored) and each output is cut back to its image's size; evaluation runs one image per
batch by default, because LR-ASPP's and DeepLabV3's image-level pooling would also average the padding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.data.images import KeyedDraws, open_rgb, spare_cores
from tunesmith.data.masks import IGNORE, MaskReader

OVERLAY_WIDTH = 960


class PairTransform:
    """(PIL image, (H, W) uint8 mask) -> ((3, H', W') normalised float, (H', W') int64 mask)."""

    def __init__(self, mean: list[float], std: list[float], preset: str = "none", crop_size: int = 256,
                 scale_range: tuple[float, float] = (0.5, 2.0), hflip: bool = True, vflip: bool = False):
        from torchvision.transforms import v2

        from tunesmith.strategies.augmentation import WeatherShift

        steps: list[Any] = [v2.ToImage()]
        self.weather = WeatherShift() if preset == "weather" else None
        self.scale_range = scale_range if preset != "none" else None
        if preset != "none":
            steps.append(v2.RandomCrop(crop_size, pad_if_needed=True, fill=self._fills(mean)))
            steps += [v2.RandomHorizontalFlip()] if hflip else []
            steps += [v2.RandomVerticalFlip()] if vflip else []
        if preset == "strong":
            steps.append(v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05))
        steps += [v2.ToDtype({_image(): torch.float32, "others": None}, scale=True), v2.Normalize(mean, std)]
        self.steps = v2.Compose(steps)

    @staticmethod
    def _fills(mean: list[float]) -> dict[type, Any]:
        """Crop padding: the mean colour (0 once normalised, as batch padding is), and the ignore value."""
        from torchvision import tv_tensors

        return {tv_tensors.Image: [round(255 * m) for m in mean], tv_tensors.Mask: IGNORE}

    def __call__(self, image: Any, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        target = tv_tensors.Mask(torch.from_numpy(mask.copy()))  # the reader's maps are shared and read-only
        if self.scale_range is not None:  # drawn from torch's generator, which keyed_rng has seeded
            low, high = self.scale_range
            factor = low + (high - low) * float(torch.rand(()))
            size = [max(1, round(image.height * factor)), max(1, round(image.width * factor))]
            image, target = F.resize(image, size), F.resize(target, size)  # the mask is resized nearest
        if self.weather is not None:
            image = self.weather(image)
        pixels, target = self.steps(image, target)
        return pixels.as_subclass(torch.Tensor), target.as_subclass(torch.Tensor).long()


def _image() -> type:
    from torchvision import tv_tensors

    return tv_tensors.Image


class SegmentationDataset(KeyedDraws):
    """Image + mask pairs decoded on access: `{"pixel_values", "labels", "size", "index"}` per item
    (no labels when predicting); training draws keyed on (seed, epoch, index)."""

    def __init__(self, images: list[str], masks: list[str] | None, reader: MaskReader, transform: PairTransform,
                 seed: int | None = None):
        self.images, self.masks, self.reader, self.transform, self.seed = images, masks, reader, transform, seed
        self.epoch = 0
        self.inputs_needed = True
        self.preferred_workers = spare_cores()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from tunesmith.strategies.augmentation import keyed_rng

        image = open_rgb(self.images[index])
        mask = self.reader.read(self.masks[index]) if self.masks is not None else \
            np.zeros((image.height, image.width), dtype=np.uint8)
        if self.seed is None:
            pixels, target = self.transform(image, mask)
        else:
            with keyed_rng(self.seed, self.epoch, index):
                pixels, target = self.transform(image, mask)
        item = {"pixel_values": pixels, "size": (image.height, image.width) if self.seed is None else
                tuple(target.shape), "index": index}
        if self.masks is not None:
            item["labels"] = target
        return item


def pad_batch(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """(B, 3, H, W) pixels, (B, H, W) masks and (B, 2) true sizes, padded to the batch's largest image
    (the models take any size: they upsample their output to the input's)."""
    height = max(f["pixel_values"].shape[1] for f in features)
    width = max(f["pixel_values"].shape[2] for f in features)
    pixels = torch.zeros((len(features), 3, height, width))
    masks = torch.full((len(features), height, width), IGNORE, dtype=torch.long)
    for i, f in enumerate(features):
        h, w = f["pixel_values"].shape[1:]
        pixels[i, :, :h, :w] = f["pixel_values"]
        if "labels" in f:
            masks[i, :h, :w] = f["labels"]
    batch = {"pixel_values": pixels, "sizes": torch.tensor([f["size"] for f in features], dtype=torch.long)}
    if "labels" in features[0]:
        batch["labels"] = masks
    return batch


def class_maps(logits: torch.Tensor, sizes: torch.Tensor) -> list[np.ndarray]:
    """Per image, its (H, W) uint8 map of predicted classes, cut to the image's own size."""
    predicted = logits.argmax(1).to(torch.uint8).cpu().numpy()  # (B, H, W)
    return [predicted[i, :h, :w] for i, (h, w) in enumerate(sizes.tolist())]


def dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes, ignored pixels left out (small objects weigh
    as much as large ones, which pixel-wise cross-entropy does not give them)."""
    probs = logits.float().softmax(1)  # (B, K, H, W)
    valid = (labels != IGNORE).unsqueeze(1)
    onehot = torch.nn.functional.one_hot(labels.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2)
    probs, onehot = probs * valid, onehot * valid
    dims = (0, 2, 3)
    dice = (2 * (probs * onehot).sum(dims) + 1) / (probs.sum(dims) + onehot.sum(dims) + 1)
    return 1 - dice[1:].mean() if logits.shape[1] > 1 else 1 - dice.mean()


PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], dtype=np.uint8)


def write_mask(mask: np.ndarray, path: Path) -> None:
    """A predicted class map as a palette PNG: pixel value = class index, shown in distinct colours."""
    from PIL import Image

    image = Image.fromarray(mask, mode="P")
    image.putpalette(np.resize(PALETTE, (256, 3)).flatten().tolist())
    image.save(path)


def coco_results(images: list[str], maps: list[np.ndarray], names: list[str], path: Path) -> bool:
    """Writes the class maps as COCO results (one run-length-encoded `segmentation` per image and
    predicted foreground class, with `file_name`, `category_id` = class index and its name); False,
    writing nothing, where pycocotools is not installed."""
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        return False
    results = []
    for image, predicted in zip(images, maps):
        for cls in np.unique(predicted):
            if cls == 0:
                continue
            rle = coco_mask.encode(np.asfortranarray(predicted == cls, dtype=np.uint8))
            results.append({"file_name": image, "category_id": int(cls), "category": names[int(cls)],
                            "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                            "area": int((predicted == cls).sum()), "score": 1.0})
    path.write_text(json.dumps(results) + "\n", encoding="utf-8")
    return True


def write_overlay(image_path: str, truth: np.ndarray | None, predicted: np.ndarray, path: Path) -> None:
    """The image, its true mask and the predicted one side by side, classes tinted over the image."""
    from PIL import Image

    pixels = np.asarray(open_rgb(image_path), dtype=np.float32)
    panels = [pixels] + [_tinted(pixels, m) for m in ([truth] if truth is not None else []) + [predicted]]
    picture = Image.fromarray(np.concatenate(panels, axis=1).astype(np.uint8))
    picture.thumbnail((OVERLAY_WIDTH, OVERLAY_WIDTH))  # the report inlines it: keep it small
    picture.save(path)


def _tinted(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    colours = np.resize(PALETTE, (256, 3))[mask].astype(np.float32)
    shown = (mask != 0) & (mask != IGNORE)
    out = pixels.copy()
    out[shown] = 0.45 * pixels[shown] + 0.55 * colours[shown]
    return out
