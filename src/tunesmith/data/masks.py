"""Segmentation data: images paired with per-pixel class masks, read from three layouts and checked.

- A COCO instances JSON (`images`, `annotations`, `categories`): polygons or RLE per object,
  rasterised with pycocotools (the `[detection]` extra) into one class map per image; class 0 is
  the background, class i the i-th category by id; a crowd region is ignored in the loss (255).
  Image paths are relative to `image_segmentation.image_root`, else the JSON's folder.
- A folder holding `images/` and `masks/`, paired by file stem (`images/a.jpg` with `masks/a.png`).
- A CSV/JSONL/Parquet table with an image path column and a mask path column.
A mask PNG holds a class index per pixel (palette or grey; 255 is ignored), or with
`image_segmentation.mask_values: instances` an object id per pixel (16-bit instance masks), every
non-zero one the single object class. Rows are `LabelledRows` whose one input is the image path and
whose label is the mask: its path, or `<json>#<image id>` for a COCO image (`MaskReader` turns either
into a (H, W) uint8 map). An image with no objects is a valid, all-background training image.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunesmith.data.coco import CocoImage, read_coco
from tunesmith.data.file_rows import FileKind, resolve_paths
from tunesmith.data.images import IMAGE_EXTENSIONS, image_problem
from tunesmith.data.labelled import LabelledRows
from tunesmith.data.readers import not_found, read_table, require_text
from tunesmith.errors import DataError

log = logging.getLogger("tunesmith")

IGNORE = 255
"""Mask value left out of the loss and the scores (unlabelled pixels, crowd regions, crop padding)."""
SEGMENTATION_IMAGES = FileKind("image", "images", IMAGE_EXTENSIONS, "image_segmentation", "image_column", "image_root",
                               "images/*.png with masks/*.png")
DETECTION_INSTALL = "'tunesmith[detection]'"


CACHED_BYTES = 1 << 30  # rasterised COCO maps kept, in all (beyond it, rasterised again on each read)


@dataclass
class MaskReader:
    """Turns a row's mask reference into a (H, W) uint8 class map; picklable, for data-loader workers.

    A COCO image's map is rasterised once (the preflight's check reads every one) and kept, up to
    `CACHED_BYTES` in all: rasterising is a third of a training item's cost, and data loading is what
    a CPU run waits on. Workers get the kept maps with the dataset."""

    mask_values: str = "classes"
    coco: dict[str, CocoImage] = field(default_factory=dict)
    rasterised: dict[str, np.ndarray] = field(default_factory=dict)
    rasterised_bytes: int = 0

    def read(self, ref: str) -> np.ndarray:
        """Raises:
            ValueError, OSError: the mask cannot be decoded or holds values that are no class index.
        """
        if ref in self.rasterised:
            return self.rasterised[ref]
        if ref in self.coco:
            mask: np.ndarray = rasterize(self.coco[ref])
            if self.rasterised_bytes + mask.nbytes <= CACHED_BYTES:
                mask.flags.writeable = False  # shared by every read: a transform must copy, never write
                self.rasterised[ref] = mask
                self.rasterised_bytes += mask.nbytes
            return mask
        from PIL import Image

        with Image.open(ref) as png:
            if png.mode not in ("P", "L", "I;16", "I;16B", "I;16L", "I", "1"):
                raise ValueError(f"mask mode {png.mode}: save one class index per pixel as a single-channel (grey or "
                                 "palette) PNG")
            values = np.asarray(png)
        if self.mask_values == "instances":
            return (values != 0).astype(np.uint8)
        if values.max(initial=0) > IGNORE:
            raise ValueError(f"mask values up to {int(values.max())}: class indices must be below {IGNORE} (set "
                             "image_segmentation.mask_values: instances for instance-id masks)")
        return values.astype(np.uint8)


def rasterize(image: CocoImage) -> np.ndarray:
    """(H, W) class map of one COCO image; later objects paint over earlier ones, crowds paint 255."""
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        raise DataError(f"COCO polygons and RLE need pycocotools: pip install {DETECTION_INSTALL}") from None
    out = np.zeros((image.height, image.width), dtype=np.uint8)
    for obj in image.objects:
        cls, segmentation, crowd = obj.cls, obj.segmentation, obj.crowd
        if isinstance(segmentation, list):
            rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, image.height, image.width))
        elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            rle = coco_mask.frPyObjects(segmentation, image.height, image.width)
        else:
            rle = segmentation
        out[coco_mask.decode(rle).astype(bool)] = IGNORE if crowd else cls
    return out


def read_segmentation(path: str | Path, image_column: str, mask_column: str, image_root: str | None,
                      reader: MaskReader) -> tuple[LabelledRows, list[str] | None]:
    """The rows of a COCO JSON, an images/ + masks/ folder, or a table of pairs; COCO's class names
    (None for masks, whose classes are named in the config or numbered).

    Raises:
        DataError: the path is missing or in none of the layouts, or its annotations are malformed.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(not_found(p) + "; give a COCO JSON file, a folder with images/ and masks/, or a CSV/JSONL "
                        "of image and mask paths")
    if p.is_dir():
        return _read_folder(p, image_column), None
    if p.suffix.lower() == ".json":
        return _read_coco(p, image_column, image_root, reader)
    return _read_pairs(p, image_column, mask_column, image_root), None


def _read_folder(folder: Path, key: str) -> LabelledRows:
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not (images_dir.is_dir() and masks_dir.is_dir()):
        raise DataError(f"{folder}: a segmentation folder holds images/ and masks/ (paired by file name); found "
                        f"{', '.join(sorted(c.name for c in folder.iterdir())[:8]) or 'nothing'}")
    masks = {m.stem: m for m in sorted(masks_dir.iterdir()) if m.suffix.lower() == ".png"}
    images = [i for i in sorted(images_dir.iterdir()) if i.suffix.lower() in IMAGE_EXTENSIONS]
    paired = [i for i in images if i.stem in masks]
    unpaired = [i.name for i in images if i.stem not in masks]
    if unpaired:
        log.warning("%s: %d images have no mask in masks/ and are left out (e.g. %s)", folder, len(unpaired),
                    ", ".join(unpaired[:3]))
    if not paired:
        raise DataError(f"{folder}: no image in images/ has a mask of the same name in masks/ (masks are PNGs: "
                        "images/a.jpg goes with masks/a.png)")
    return LabelledRows(source=str(folder), inputs={key: [str(i.resolve()) for i in paired]},
                        labels=[str(masks[i.stem].resolve()) for i in paired], lines=list(range(1, len(paired) + 1)),
                        skipped=len(unpaired), columns={key: [i.name for i in paired]})


def _read_pairs(table: Path, image_column: str, mask_column: str, image_root: str | None) -> LabelledRows:
    frame = read_table(table)
    keys = {image_column: "image_segmentation.image_column", mask_column: "image_segmentation.mask_column"}
    for name, key in keys.items():
        if name not in frame.columns:
            raise DataError(f"{table}: column {name!r} not found; columns are "
                            f"{', '.join(repr(c) for c in frame.columns)} (set {key} to the right name)")
    require_text(frame, list(keys), table)
    images = resolve_paths(SEGMENTATION_IMAGES, table, frame[image_column].str.strip().tolist(), image_root)
    masks = resolve_paths(SEGMENTATION_IMAGES, table, frame[mask_column].str.strip().tolist(), image_root)
    return LabelledRows(source=str(table), inputs={image_column: images}, labels=masks,
                        lines=[int(n) for n in frame.index], columns={str(c): frame[c].tolist() for c in frame.columns})


def _read_coco(path: Path, key: str, image_root: str | None, reader: MaskReader) -> tuple[LabelledRows, list[str]]:
    if importlib.util.find_spec("pycocotools") is None:  # before any pair is checked: one clear line, not one per image
        raise DataError(f"{path}: COCO polygons and RLE need pycocotools: pip install {DETECTION_INSTALL}")
    return read_coco(path, SEGMENTATION_IMAGES, key, image_root, "outline", reader.coco)


def pair_problem(image: str, ref: str, reader: MaskReader, num_classes: int | None,
                 tops: dict[str, int] | None = None) -> str | None:
    """Why an (image, mask) pair cannot be used, or None: either does not decode, their sizes differ,
    or the mask holds a class index the model has no output for. `tops`, when given, gets the
    largest class index of each usable mask (to number the classes when none are named)."""
    why = image_problem(image)
    if why:
        return why
    from PIL import Image

    try:
        mask = reader.read(ref)
    except FileNotFoundError:
        return f"mask {ref}: file not found"
    except Exception as exc:  # noqa: BLE001 - Pillow and pycocotools raise many types for corrupt masks
        return f"mask {ref}: {exc}"
    with Image.open(image) as img:
        size = (img.height, img.width)
    if mask.shape != size:
        return f"its mask is {mask.shape[1]}x{mask.shape[0]} but the image is {size[1]}x{size[0]} (width x height)"
    top = int(mask[mask != IGNORE].max(initial=0))
    if num_classes is not None and top >= num_classes:
        return (f"its mask holds class {top}, but there are {num_classes} classes (set image_segmentation.class_names "
                f"to name every class, 0 = background)")
    if tops is not None:
        tops[image] = top
    return None
