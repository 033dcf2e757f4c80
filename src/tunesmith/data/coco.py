"""COCO instances files: images, their objects and the categories, read and checked once for every task.

A COCO JSON holds `images` (id, file_name, width, height), `annotations` (image_id, category_id,
bbox as [x, y, w, h], segmentation as polygons or RLE, iscrowd) and `categories`. Rows are one per
image, its path resolved from `<section>.image_root` or the JSON's folder; the label is
`<json>#<image id>`, the key of its `CocoImage` (its size and objects). Class 0 is the background,
class i the i-th category by id. What a task needs decides what a malformed annotation is: an
outline for segmentation, a box for detection; either missing, an unknown category or image id is
an error naming the annotation. Whether a box fits its image is checked per image later, against
the decoded image (`box_problem`), so such images can be skipped like unreadable ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunesmith.data.file_rows import FileKind, resolve_paths
from tunesmith.data.labelled import LabelledRows
from tunesmith.errors import DataError


@dataclass(frozen=True)
class CocoObject:
    """One annotation: its class index (1 = the first category), box [x, y, w, h], outline, crowd flag."""

    cls: int
    box: tuple[float, float, float, float] | None
    segmentation: Any
    crowd: bool
    id: Any = None


@dataclass(frozen=True)
class CocoImage:
    """One COCO image: its size as the JSON states it and its objects (none: an all-background image)."""

    height: int
    width: int
    objects: tuple[CocoObject, ...]


def read_coco(path: Path, kind: FileKind, key: str, image_root: str | None, needs: Literal["outline", "box"],
              images: dict[str, CocoImage]) -> tuple[LabelledRows, list[str]]:
    """The file's rows and class names (`background` first); each image's `CocoImage` goes into `images`.

    Raises:
        DataError: not a COCO instances file, or an annotation that names an unknown image or category
            or lacks the outline or box the task needs.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON file ({exc})") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise DataError(f"{path}: a COCO instances file needs the lists {', '.join(missing)}")
    for im in data["images"]:
        if not all(k in im for k in ("id", "file_name", "width", "height")):
            raise DataError(f"{path}: image {im.get('id', '?')} lacks one of id, file_name, width, height")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    class_of = {c["id"]: i + 1 for i, c in enumerate(categories)}
    by_image: dict[Any, list[CocoObject]] = {im["id"]: [] for im in data["images"]}
    for ann in data["annotations"]:
        if ann.get("image_id") not in by_image:
            raise DataError(f"{path}: annotation {ann.get('id', '?')} refers to image_id {ann.get('image_id')!r}, "
                            "which is not in images")
        by_image[ann["image_id"]].append(_object(ann, path, class_of, needs))
    paths = resolve_paths(kind, path, [im["file_name"] for im in data["images"]], image_root)
    labels = [f"{path.resolve()}#{im['id']}" for im in data["images"]]
    for im, label in zip(data["images"], labels):
        images[label] = CocoImage(int(im["height"]), int(im["width"]), tuple(by_image[im["id"]]))
    rows = LabelledRows(source=str(path), inputs={key: paths}, labels=labels, lines=list(range(1, len(paths) + 1)),
                        columns={key: [im["file_name"] for im in data["images"]]})
    return rows, ["background", *[str(c.get("name", c["id"])) for c in categories]]


def _object(ann: dict[str, Any], path: Path, class_of: dict[Any, int], needs: str) -> CocoObject:
    where = f"{path}: annotation {ann.get('id', '?')}"
    if ann.get("category_id") not in class_of:
        raise DataError(f"{where} has category_id {ann.get('category_id')!r}, not one of the categories "
                        f"({', '.join(str(c) for c in class_of)}); add it to categories or fix the id")
    segmentation = ann.get("segmentation")
    has_outline = (isinstance(segmentation, dict) and "counts" in segmentation) or (
        isinstance(segmentation, list) and bool(segmentation) and all(len(poly) >= 6 for poly in segmentation))
    if needs == "outline" and not has_outline:
        raise DataError(f"{where} has no usable segmentation (polygons of at least 3 points, or RLE); "
                        "segmentation needs object outlines, not only boxes")
    box = ann.get("bbox")
    if needs == "box" and not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
        raise DataError(f"{where} has no bbox [x, y, width, height] (found {box!r}); detection needs a box per object")
    return CocoObject(class_of[ann["category_id"]], tuple(float(v) for v in box) if box else None,  # type: ignore[arg-type]  # four numbers, checked above
                      segmentation if has_outline else None, bool(ann.get("iscrowd")), ann.get("id"))


def box_problem(image: CocoImage, height: int, width: int) -> str | None:
    """Why an image's boxes cannot be trained on, or None: the JSON's size differs from the decoded
    image's, a box has no area, or a box lies wholly outside the image (partly outside is clipped)."""
    if (image.height, image.width) != (height, width):
        return (f"the JSON says {image.width}x{image.height} but the image is {width}x{height} (width x height); "
                "fix its width and height")
    for obj in image.objects:
        if obj.box is None or obj.crowd:
            continue
        x, y, w, h = obj.box
        if w <= 0 or h <= 0:
            return f"annotation {obj.id}: box {list(obj.box)} has no area (width and height must be positive)"
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            return f"annotation {obj.id}: box {list(obj.box)} lies outside the {width}x{height} image"
    return None
