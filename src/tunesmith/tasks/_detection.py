"""What object detection needs beside its task file: paired transforms, the dataset, batches, boxes out.

Training images and their boxes go through torchvision's `transforms.v2` together (a
`tv_tensors.BoundingBoxes` moves and is clipped with the pixels): `light` rescales by a random factor
in `scale_range`, crops `crop_size` squares and flips, and `SanitizeBoundingBoxes` drops the boxes a
crop leaves too small; `strong` adds colour jitter, `weather` shifted conditions. `none` trains on
whole images, as evaluation does. Pixels stay in [0, 1]: the detector normalises and resizes them
itself (`min_size`, `max_size`). Draws are keyed on (seed, epoch, index) like the other image tasks'.
A batch pads pixels, boxes and classes to its largest (`sizes` and `counts` say what is real), so
it is one dict of tensors like every task's; `images_and_targets` unpads it for the detector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.data.coco import CocoImage
from tunesmith.data.images import KeyedDraws, open_rgb, spare_cores

MIN_BOX = 2.0  # pixels: a box a crop cuts thinner than this is dropped with its object


class BoxTransform:
    """(PIL image, (N, 4) xyxy boxes, (N,) classes) -> ((3, H', W') float in [0, 1], boxes, classes)."""

    def __init__(self, preset: str = "none", crop_size: int = 512, scale_range: tuple[float, float] = (0.5, 2.0),
                 hflip: bool = True, vflip: bool = False):
        from torchvision.transforms import v2

        from tunesmith.strategies.augmentation import WeatherShift

        self.scale_range = scale_range if preset != "none" else None
        self.weather = WeatherShift() if preset == "weather" else None
        steps: list[Any] = [v2.ToImage()]
        if preset != "none":
            steps.append(v2.RandomCrop(crop_size, pad_if_needed=True, fill=0))
            steps += [v2.RandomHorizontalFlip()] if hflip else []
            steps += [v2.RandomVerticalFlip()] if vflip else []
        if preset == "strong":
            steps.append(v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05))
        steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=MIN_BOX, labels_getter=_classes),
                  v2.ToDtype(torch.float32, scale=True)]
        self.steps = v2.Compose(steps)

    def __call__(self, image: Any, boxes: np.ndarray, classes: np.ndarray) -> tuple[torch.Tensor, ...]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        height, width = image.height, image.width
        box = tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYXY",
                                       canvas_size=(height, width))
        if self.scale_range is not None:  # drawn from torch's generator, which keyed_rng has seeded
            low, high = self.scale_range
            factor = low + (high - low) * float(torch.rand(()))
            size = [max(1, round(height * factor)), max(1, round(width * factor))]
            image, box = F.resize(image, size), F.resize(box, size)
        if self.weather is not None:
            image = self.weather(image)
        out = self.steps({"image": image, "boxes": box, "classes": torch.as_tensor(classes, dtype=torch.long)})
        return (out["image"].as_subclass(torch.Tensor), out["boxes"].as_subclass(torch.Tensor).reshape(-1, 4),
                out["classes"])


def _classes(sample: Any) -> Any:
    return sample[0]["classes"] if isinstance(sample, tuple) else sample["classes"]


def true_boxes(image: CocoImage) -> tuple[np.ndarray, np.ndarray]:
    """((N, 4) xyxy boxes clipped to the image, (N,) classes) of its objects, crowd regions left out
    (torchvision's detectors have no ignore regions)."""
    kept = [o for o in image.objects if not o.crowd and o.box is not None]
    boxes = np.array([[o.box[0], o.box[1], o.box[0] + o.box[2], o.box[1] + o.box[3]] for o in kept],  # type: ignore[index]  # kept has boxes
                     dtype=np.float32).reshape(-1, 4)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, image.width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, image.height)
    return boxes, np.array([o.cls for o in kept], dtype=np.int64)


class DetectionDataset(KeyedDraws):
    """Images with their boxes, decoded on access: `{"pixel_values", "boxes", "labels", "size", "index"}`
    (no boxes or labels when predicting); training draws keyed on (seed, epoch, index)."""

    def __init__(self, images: list[str], targets: list[CocoImage] | None, transform: BoxTransform,
                 seed: int | None = None):
        self.images, self.targets, self.transform, self.seed = images, targets, transform, seed
        self.epoch = 0
        self.inputs_needed = True
        self.preferred_workers = spare_cores()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from tunesmith.strategies.augmentation import keyed_rng

        image = open_rgb(self.images[index])
        boxes, classes = true_boxes(self.targets[index]) if self.targets is not None else \
            (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        if self.seed is None:
            pixels, box, cls = self.transform(image, boxes, classes)
        else:
            with keyed_rng(self.seed, self.epoch, index):
                pixels, box, cls = self.transform(image, boxes, classes)
        item = {"pixel_values": pixels, "size": tuple(pixels.shape[1:]), "index": index}
        if self.targets is not None:
            item.update(boxes=box, labels=cls)
        return item


def pad_batch(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """(B, 3, H, W) pixels and (B, 2) sizes; when labelled, (B, M, 4) boxes, (B, M) classes and (B,) counts."""
    height = max(f["pixel_values"].shape[1] for f in features)
    width = max(f["pixel_values"].shape[2] for f in features)
    pixels = torch.zeros((len(features), 3, height, width))
    for i, f in enumerate(features):
        pixels[i, :, :f["pixel_values"].shape[1], :f["pixel_values"].shape[2]] = f["pixel_values"]
    batch = {"pixel_values": pixels, "sizes": torch.tensor([f["size"] for f in features], dtype=torch.long)}
    if "labels" not in features[0]:
        return batch
    most = max(1, max(len(f["labels"]) for f in features))
    boxes = torch.zeros((len(features), most, 4))
    labels = torch.zeros((len(features), most), dtype=torch.long)
    for i, f in enumerate(features):
        boxes[i, :len(f["labels"])] = f["boxes"]
        labels[i, :len(f["labels"])] = f["labels"]
    batch.update(boxes=boxes, labels=labels, counts=torch.tensor([len(f["labels"]) for f in features]))
    return batch


def images_and_targets(batch: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]] | None]:
    """The batch as torchvision's detectors take it: a list of (3, H, W) images and, when labelled, a
    list of {"boxes": (N, 4), "labels": (N,)}."""
    images = [batch["pixel_values"][i, :, :h, :w] for i, (h, w) in enumerate(batch["sizes"].tolist())]
    if "labels" not in batch:
        return images, None
    targets = [{"boxes": batch["boxes"][i, :n], "labels": batch["labels"][i, :n]}
               for i, n in enumerate(batch["counts"].tolist())]
    return images, targets


def write_boxes(image_path: str, truth: tuple[np.ndarray, np.ndarray] | None, predicted: dict[str, np.ndarray],
                threshold: float, path: Path) -> None:
    """The image with its true boxes (green) and the predicted ones at or above `threshold` (red)."""
    from PIL import ImageDraw

    image = open_rgb(image_path)
    draw = ImageDraw.Draw(image)
    if truth is not None:
        for box in truth[0]:
            draw.rectangle([float(v) for v in box], outline=(40, 220, 60))
    for box, score in zip(predicted["boxes"], predicted["scores"]):
        if score >= threshold:
            draw.rectangle([float(v) for v in box], outline=(235, 40, 40))
    image.thumbnail((960, 960))  # the report inlines it: keep it small
    image.save(path)
