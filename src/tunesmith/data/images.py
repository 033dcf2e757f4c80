"""Image data: folders of class subfolders or CSV/JSONL files of paths, checked and decoded.

Three layouts are read into `LabelledRows` (the image paths are the one input column):
a folder with a subfolder per class; a folder holding `train/` and `val/` (or `validation/`, or
`test/`) folders of class subfolders; and a table (CSV, TSV, JSONL, Parquet) with a path column and a
label column, paths relative to the table's folder or `image_classification.image_root`. `check_images` decodes
every image in a preflight, before any weights load, and reports the unreadable ones (missing,
empty, truncated, not an image) by path. `ImageDataset` decodes on the fly, converts grayscale,
palette, 16-bit and transparent images to RGB (transparency over white), honours EXIF rotation,
and runs each training sample's transform keyed on (seed, epoch, index).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from tunesmith.data.labelled import LabelledRows
from tunesmith.data.readers import not_found, read_table, require_text
from tunesmith.errors import DataError

log = logging.getLogger("tunesmith")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# In order of preference: with both val/ and test/, val/ validates and test/ stays untouched.
SPLIT_FOLDERS = {"train": ("train", "training"), "validation": ("val", "valid", "validation", "test")}
LAYOUTS = ("a folder with one subfolder of images per class (cats/*.jpg, dogs/*.jpg); a folder holding train/ and "
           "val/ (or validation/ or test/), each with one subfolder per class; or a CSV/JSONL of image paths and labels")


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


def split_folders(folder: Path) -> tuple[Path, Path] | None:
    """`(train, validation)` subfolders when `folder` holds both, else None; the validation folder is
    the first of val/, valid/, validation/, test/ present (the log says which, and what is left unused)."""
    found = []
    for names in SPLIT_FOLDERS.values():
        found.append([folder / n for n in names if (folder / n).is_dir()])
    if not all(found):
        return None
    (train, *_), (validation, *unused) = found
    log.info("%s: training on %s/, validating on %s/%s", folder, train.name, validation.name,
             f" ({', '.join(p.name + '/' for p in unused)} not used)" if unused else "")
    return train, validation


def read_images(path: str | Path, image_column: str, label_column: str | None, image_root: str | None,
                bad_rows: str, labelled: bool = True) -> LabelledRows:
    """Reads an image folder or a table of paths (labels are folder names or `label_column`).

    Raises:
        DataError: the path is missing, a folder has no class folders or images, a table lacks
            the path or label column, or (under `bad_rows: error`) has rows with empty cells.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(not_found(path, "data"))
    if path.is_dir():
        return _read_class_folders(path, image_column) if labelled else _read_loose_images(path, image_column)
    return _read_path_table(path, image_column, label_column if labelled else None, image_root, bad_rows)


def _image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS], [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]


def _read_class_folders(folder: Path, key: str) -> LabelledRows:
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder}: no class folders found; an image folder needs one subfolder per class "
                        "(e.g. train/cats/*.jpg, train/dogs/*.jpg), or use a CSV with image_classification.image_column")
    paths, labels, ignored, nested = [], [], [], {}
    for class_folder in classes:
        images, others = _image_files(class_folder)
        paths += [str(p) for p in images]
        labels += [class_folder.name] * len(images)
        ignored += others
        inner = sorted({p.relative_to(class_folder).parts[0] for p in images if p.parent != class_folder})
        if inner:
            nested[class_folder.name] = inner
    _note_ignored(folder, ignored)
    _check_nesting(folder, [c.name for c in classes], nested)
    empty = [c.name for c in classes if c.name not in set(labels)]
    if empty:
        log.warning("%s: class folders with no images are ignored: %s", folder, ", ".join(empty[:10]))
    if not paths:
        raise DataError(f"{folder}: the class folders hold no images ({', '.join(IMAGE_EXTENSIONS)})")
    return LabelledRows(str(folder), {key: paths}, labels, list(range(1, len(paths) + 1)))


def _check_nesting(folder: Path, classes: list[str], nested: dict[str, list[str]]) -> None:
    """Refuses class folders that are really split folders or one level too high; warns that images in
    subfolders of a class folder are labelled by the class folder (the tree is flattened).

    Raises:
        DataError: a class folder named like a split (train/, test/, ...) holds subfolders of images,
            or the only class folder holds subfolders of images.
    """
    splits = {n for names in SPLIT_FOLDERS.values() for n in names} | {"testing"}
    as_splits = [c for c in nested if c.lower() in splits]
    if as_splits:
        raise DataError(f"{folder}: {', '.join(c + '/' for c in as_splits)} look like split folders holding class "
                        f"folders, not classes; the layouts read are {LAYOUTS}. Point data.train at {folder} only "
                        "when it holds train/ together with val/, validation/ or test/, or set data.train and "
                        "data.validation to the split folders")
    if len(classes) == 1 and nested:
        raise DataError(f"{folder}: the only class folder, {classes[0]}/, holds folders of images "
                        f"({', '.join(nested[classes[0]][:5])}); did you mean {folder / classes[0]}? The layouts "
                        f"read are {LAYOUTS}")
    if nested:
        shown = "; ".join(f"{c}/ holds {', '.join(s + '/' for s in sub[:3])}" for c, sub in list(nested.items())[:5])
        log.warning("%s: class folders hold subfolders of images (%s); their images are labelled by the class "
                    "folder they lie in, the subfolder names are not labels", folder, shown)


def _read_loose_images(folder: Path, key: str) -> LabelledRows:
    images, others = _image_files(folder)
    _note_ignored(folder, others)
    if not images:
        raise DataError(f"{folder}: no images found ({', '.join(IMAGE_EXTENSIONS)})")
    return LabelledRows(str(folder), {key: [str(p) for p in images]}, [""] * len(images), list(range(1, len(images) + 1)))


def _note_ignored(folder: Path, ignored: list[Path]) -> None:
    if ignored:
        log.info("%s: ignored %d files without an image extension (e.g. %s)", folder, len(ignored), ignored[0].name)


def _read_path_table(path: Path, image_column: str, label_column: str | None, image_root: str | None,
                     bad_rows: str) -> LabelledRows:
    frame = read_table(path)
    wanted = {image_column: "image_classification.image_column"} | ({label_column: "data.label_column"} if label_column else {})
    for column, key in wanted.items():
        if column not in frame.columns:
            found = ", ".join(repr(c) for c in frame.columns)
            raise DataError(f"{path}: column {column!r} not found; columns are {found} (set {key} to the right name)")
    require_text(frame, list(wanted), path)
    cells = frame[list(wanted)].apply(lambda col: col.str.strip())
    bad = cells.eq("").any(axis=1)
    root = _image_root(path, image_root)
    keep = ~bad.to_numpy()
    rows = LabelledRows(
        source=str(path),
        inputs={image_column: [_under(root, p) for p in cells[image_column][keep]]},
        labels=cells[label_column][keep].tolist() if label_column else [""] * int(keep.sum()),
        lines=[int(n) for n, k in zip(frame.index, keep) if k],
        skipped=int(bad.sum()),
        columns={str(c): frame[c][keep].tolist() for c in frame.columns},
    )
    if rows.skipped:
        lines = ", ".join(str(n) for n, b in zip(frame.index, bad) if b)
        what = f"{rows.skipped} rows with an empty path or label (lines {lines[:60]})"
        if bad_rows == "error":
            raise DataError(f"{path}: {what}; fix them or set data.bad_rows: skip")
        log.warning("%s: skipping %s", path, what)
    if len(rows) == 0:
        raise DataError(f"{path}: no usable rows (all {len(frame)} rows have an empty path or label)")
    _check_some_exist(path, rows.inputs[image_column], root, image_root)
    return rows


def _image_root(table: Path, image_root: str | None) -> Path:
    """The folder relative image paths are resolved against: `image_classification.image_root`, else the table's folder."""
    if image_root is None:
        return table.parent
    root = Path(image_root).expanduser()
    if not root.is_dir():
        raise DataError(not_found(root, "image_classification.image_root folder") + "; set image_classification.image_root to the folder the "
                        f"relative image paths in {table} start from, or leave it unset to use the table's folder")
    return root


def _check_some_exist(table: Path, paths: list[str], root: Path, image_root: str | None) -> None:
    """Stops early, naming the folder searched, when not one image path exists (a wrong root, not bad rows)."""
    if any(os.path.exists(p) for p in paths):
        return
    how = "image_classification.image_root" if image_root else "the table's folder (image_classification.image_root is unset)"
    raise DataError(f"{table}: none of the {len(paths)} image paths exists (e.g. {paths[0]}); relative paths are "
                    f"looked up in {os.path.abspath(root)}, {how}; set image_classification.image_root to the folder they start from")


def _under(root: Path, cell: str) -> str:
    """The image's absolute path, so every message about it shows the folder it was looked up in."""
    p = Path(cell).expanduser()
    return os.path.abspath(p if p.is_absolute() else root / p)


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
    paths = rows.inputs[key]
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 2)) as pool:
        problems = list(pool.map(image_problem, paths))
    bad = [{"path": p, "problem": why} for p, why in zip(paths, problems) if why]
    shown = "; ".join(f"{b['path']}: {b['problem']}" for b in bad[:10]) + (" ..." if len(bad) > 10 else "")
    if bad and bad_rows == "error":
        raise DataError(f"{rows.source}: {len(bad)} unusable images ({shown}); fix or remove them, "
                        "or set data.bad_rows: skip to leave them out with a warning")
    if bad:
        log.warning("%s: skipping %d unusable images: %s", rows.source, len(bad), shown)
    kept = rows.subset([i for i, why in enumerate(problems) if not why])
    kept.skipped = rows.skipped + len(bad)
    if len(kept) == 0:
        raise DataError(f"{rows.source}: none of the {len(rows)} images can be read ({shown})")
    return kept, bad


class ImageDataset(Dataset):
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
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.preferred_workers = preferred_workers if preferred_workers is not None else min(8, max(0, cores - 1))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def varies_by_epoch(self) -> bool:
        """Whether an image's pixels depend on the epoch (random augmentation)."""
        return self.seed is not None

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
