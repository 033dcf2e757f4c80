"""Faces found and framed before they are embedded: MTCNN detection, eye-level rotation, a square crop.

`embedding.face_detector: demo:mtcnn` runs facenet-pytorch's MTCNN (its P-, R- and O-Net weights ship in
the package's wheel; install it with `pip install --no-deps facenet-pytorch==2.6.0`, as its pinned torch
is older than tunesmith's and it runs on this one) over every image in the preflight. Of the faces it
finds, the largest is kept; its two eye landmarks give the angle that levels them, and its box a square
crop about the box's centre, `embedding.face_margin` of the box's size wider on every side. Only that
geometry is kept per image (`FaceCrop`); `crop_face` applies it when the image is decoded for training,
evaluation or prediction, before the model's own resize and normalization. An image with no face found
is an unusable image like an unreadable one (skipped or an error, as `data.bad_rows` says).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from tunesmith.errors import ModelSourceError
from tunesmith.models.demos import Demo, package_folder, register_demo

log = logging.getLogger("tunesmith")

INSTALL = "--no-deps facenet-pytorch==2.6.0"
register_demo(Demo("mtcnn", "image", (), "timesler/facenet-pytorch (MTCNN)", INSTALL,
                   "MTCNN face detector with 5 landmarks, for embedding.face_detector (not a model to fine-tune)"))


@dataclass(frozen=True)
class FaceCrop:
    """Where a face is: the square's centre and side (pixels), and the rotation (degrees,
    counter-clockwise) that levels the eyes."""

    x: float
    y: float
    side: float
    angle: float


class FaceFinder:
    """MTCNN over images, one at a time (images differ in size), the model loaded once."""

    def __init__(self, margin: float, min_face_size: int = 20):
        package_folder("facenet_pytorch", INSTALL)  # a clear install line before the import
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise ModelSourceError(f"demo:mtcnn: facenet-pytorch does not import ({exc}); reinstall it with: "
                                   f"pip install {INSTALL}") from None
        self.margin = margin
        self.detector = MTCNN(min_face_size=min_face_size, select_largest=True, device="cpu")

    def find(self, image: Any) -> FaceCrop | None:
        """The largest face of a PIL image, or None where MTCNN finds none."""
        import numpy as np
        import torch

        with torch.inference_mode():
            boxes, _, landmarks = self.detector.detect(image, landmarks=True)
        if boxes is None or len(boxes) == 0:
            return None
        areas = [(float(b[2]) - float(b[0])) * (float(b[3]) - float(b[1])) for b in boxes]
        best = int(np.argmax(areas))
        x0, y0, x1, y1 = (float(v) for v in boxes[best])
        (lx, ly), (rx, ry) = (tuple(float(v) for v in point) for point in landmarks[best][:2])  # left, right eye
        side = max(x1 - x0, y1 - y0) * (1 + 2 * self.margin)
        angle = math.degrees(math.atan2(ry - ly, rx - lx))
        return FaceCrop((x0 + x1) / 2, (y0 + y1) / 2, side, angle)


def crop_face(image: Any, crop: FaceCrop) -> Any:
    """The face's square, eyes level, from a PIL image (parts outside the photo black)."""
    from PIL import Image

    level = image.rotate(crop.angle, resample=Image.Resampling.BILINEAR, center=(crop.x, crop.y))
    half = crop.side / 2
    return level.crop((round(crop.x - half), round(crop.y - half), round(crop.x + half), round(crop.y + half)))
