"""Image data: folders of class subfolders or CSV/JSONL files of paths, checked and decoded.

The layouts (a folder with a subfolder per class; `train/` and `val/` folders of class folders; a
table of paths and labels, relative to the table's folder or `image_classification.image_root`) are
read by `tunesmith.data.file_rows`, shared with audio. `check_images` decodes every image in a
preflight, before any weights load, and reports the unreadable ones (missing, empty, truncated, not
an image) by path. `ImageDataset` (and `ImageColumns`, rows of several images for the embedding task)
decodes on the fly, converts grayscale, palette, 16-bit and transparent images to RGB (transparency over
white), honours EXIF rotation, and runs each training sample's transform keyed on (seed, epoch, index).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from tunesmith.data.file_rows import FileKind, check_files, read_file_rows, split_folders
from tunesmith.data.labelled import LabelledRows

__all__ = ["IMAGES", "ImageColumns", "ImageDataset", "check_images", "face_or_whole", "image_problem", "open_rgb",
           "read_images", "split_folders", "to_rgb"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGES = FileKind("image", "images", IMAGE_EXTENSIONS, "image_classification", "image_column", "image_root",
                  "cats/*.jpg, dogs/*.jpg")


def open_rgb(path: str | Path):
    """Decodes an image as 8-bit RGB, upright (EXIF orientation applied)."""
    from PIL import Image

    with Image.open(path) as image:
        return to_rgb(image)


def to_rgb(image):
    """A decoded image as 8-bit RGB: EXIF rotation applied, 16-bit grey scaled down, transparency over white.

    Raises:
        ValueError, OSError: the image's mode or data cannot be converted.
    """
    import numpy as np
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.float64)  # (H, W), any byte order
        image = Image.fromarray((values / 256).clip(0, 255).astype(np.uint8), "L")  # 16-bit grey -> 8-bit
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def read_images(path: str | Path, image_column: str, label_column: str | None, image_root: str | None,
                bad_rows: str, labelled: bool = True) -> LabelledRows:
    """Reads an image folder or a table of paths (labels are folder names or `label_column`).

    Raises:
        DataError: the path is missing, a folder has no class folders or images, a table lacks
            the path or label column, or (under `bad_rows: error`) has rows with empty cells.
    """
    return read_file_rows(IMAGES, path, image_column, label_column, image_root, bad_rows, labelled)


def image_problem(path: str) -> str | None:
    """Why `path` cannot be used as an image, or None when it decodes."""
    from PIL import Image, UnidentifiedImageError

    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as image:
            # Decoding at reduced scale still reads the whole compressed stream, so truncation shows.
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
            to_rgb(image)  # the conversion the data loader will do, so an unconvertible mode shows here
    except FileNotFoundError:
        return "file not found"
    except UnidentifiedImageError:
        return "not an image (or a format Pillow cannot read)"
    except Image.DecompressionBombError as exc:
        return f"too large ({exc})"
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for corrupt files; any means unusable
        return f"unreadable ({exc})"
    return None


def check_images(rows: LabelledRows, key: str, bad_rows: str) -> tuple[LabelledRows, list[dict[str, Any]]]:
    """Decodes every image of `rows`; drops the bad ones (`skip`) or raises naming them (`error`).

    Returns:
        The usable rows and one `{"path", "problem"}` record per unusable image.

    Raises:
        DataError: under `bad_rows: error` when any image is unusable, or when none is usable.
    """
    return check_files(IMAGES, rows, key, bad_rows, image_problem)


def spare_cores() -> int:
    """Data-loader workers for decoding images: one per core this process may use, less one, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, max(0, cores - 1))


class KeyedDraws:
    """The epoch an image dataset's random draws are keyed on (with its `seed`; None: no draws)."""

    seed: int | None
    epoch: int

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def varies_by_epoch(self) -> bool:
        """Whether an image's pixels depend on the epoch (random augmentation)."""
        return self.seed is not None


class ImageDataset(KeyedDraws, Dataset):
    """Decodes and transforms images on access; training samples are keyed on (seed, epoch, index).

    Items are `{"pixel_values": (C, H, W) float tensor, "index": i}` plus `labels` (an int) when
    labelled and `epoch` when augmenting (collate keys mixup on it). While the activation cache
    replays a frozen backbone's outputs it sets `inputs_needed` false, and items carry no pixels
    (nothing is decoded).
    """

    def __init__(self, paths: list[str], labels: list[int] | None, transform: Callable, seed: int | None = None,
                 preferred_workers: int | None = None):
        """`seed=None` means no randomness (evaluation); `preferred_workers` defaults to one per
        spare CPU core, at most 8 (`make_loader` uses it when no worker count is configured)."""
        self.paths = paths
        self.labels = labels
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.inputs_needed = True
        self.preferred_workers = preferred_workers if preferred_workers is not None else spare_cores()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from tunesmith.strategies.augmentation import keyed_rng

        item: dict[str, Any] = {"index": index}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        if not self.inputs_needed:
            return item
        image = open_rgb(self.paths[index])
        if self.seed is None:
            item["pixel_values"] = self.transform(image)
        else:
            with keyed_rng(self.seed, self.epoch, index):
                item["pixel_values"] = self.transform(image)
            item["epoch"] = self.epoch
        return item


class ImageColumns(KeyedDraws):
    """Rows of one to three images, decoded and transformed on access; training draws are keyed on
    (seed, epoch, row, column), so a run repeats whatever the number of data-loader workers.

    Items are `{"pixels": [(C, H, W) per column], "index": i}` plus `labels` (an int) when labelled.
    `crops` (embedding.face_detector) frames each image's face first.
    """

    def __init__(self, columns: list[list[str]], labels: list[int] | None, transform: Any, crops: dict[str, Any],
                 seed: int | None = None):
        self.columns, self.labels, self.transform, self.crops, self.seed = columns, labels, transform, crops, seed
        self.epoch = 0
        self.inputs_needed = True
        self.preferred_workers = spare_cores()

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        from tunesmith.strategies.augmentation import keyed_rng

        item: dict[str, Any] = {"index": index, "pixels": []}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        for c, paths in enumerate(self.columns):
            image = face_or_whole(paths[index], self.crops)
            if self.seed is None:
                item["pixels"].append(self.transform(image))
            else:
                with keyed_rng(self.seed, self.epoch, index * len(self.columns) + c):
                    item["pixels"].append(self.transform(image))
        return item


def face_or_whole(path: str, crops: dict[str, Any]) -> Any:
    """The decoded image, or its face's crop where a face detector framed it."""
    image = open_rgb(path)
    if crops.get(path) is None:
        return image
    from tunesmith.data.faces import crop_face

    return crop_face(image, crops[path])
