"""COCO box average precision of detections against their true boxes, with pycocotools' own COCOeval.

`map` is COCO's mAP@[.5:.95] (the mean over IoU thresholds 0.50, 0.55 ... 0.95 and over classes),
`map_50` and `map_75` at one threshold, `mar` the average recall; all at up to `max_detections` boxes
per image (COCO's 100 is too few for dense scenes: cells, crowds). Per class: its AP, AP@.5 and
how many true objects it has. Crowd regions count as COCO counts them (matches to them are ignored).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

from tunesmith.data.coco import CocoImage


def detection_metrics(truths: list[CocoImage], detections: list[dict[str, np.ndarray]], names: list[str],
                      max_detections: int) -> dict[str, Any]:
    """`map`, `map_50`, `map_75`, `mar` and `per_class` ({name: ap, ap_50, objects}) of per-image detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for i, (truth, found) in enumerate(zip(truths, detections)):
        images.append({"id": i, "width": truth.width, "height": truth.height})
        for obj in truth.objects:
            if obj.box is not None:
                x, y, w, h = obj.box
                annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": obj.cls,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(obj.crowd)})
        for box, score, cls in zip(found["boxes"], found["scores"], found["labels"]):
            x0, y0, x1, y1 = (float(v) for v in box)
            results.append({"image_id": i, "category_id": int(cls), "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": float(score)})
    objects = {c: sum(1 for a in annotations if a["category_id"] == c and not a["iscrowd"]) for c in range(1, len(names))}
    empty = {"map": 0.0, "map_50": 0.0, "map_75": 0.0, "mar": 0.0,
             "per_class": {names[c]: {"ap": 0.0, "ap_50": 0.0, "objects": objects[c]} for c in objects}}
    if not annotations or not results:
        return empty
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and tables
        truth_set = COCO()
        truth_set.dataset = {"images": images, "annotations": annotations,
                             "categories": [{"id": c, "name": names[c]} for c in range(1, len(names))]}
        truth_set.createIndex()
        scored = COCOeval(truth_set, truth_set.loadRes(results), "bbox")
        scored.params.maxDets = [1, 10, max_detections]
        scored.evaluate()
        scored.accumulate()
    # Read from the accumulated arrays, not `summarize()`'s stats: those fix maxDets at 100.
    precision = scored.eval["precision"]  # (IoU thresholds .5:.05:.95, recall points, classes, areas, max dets)
    recall = scored.eval["recall"]  # (IoU thresholds, classes, areas, max dets)
    per_class = {}
    for k, c in enumerate(scored.params.catIds):
        at_all = precision[:, :, k, 0, -1]
        per_class[names[c]] = {"ap": _mean(at_all), "ap_50": _mean(at_all[0]), "objects": objects[c]}
    all_areas = precision[:, :, :, 0, -1]  # every object size, the most detections
    return {"map": _mean(all_areas), "map_50": _mean(all_areas[0]), "map_75": _mean(all_areas[5]),
            "mar": _mean(recall[:, :, 0, -1]), "per_class": per_class}


def _mean(values: np.ndarray) -> float:
    present = values[values > -1]  # COCOeval marks "no such objects" with -1
    return float(present.mean()) if present.size else 0.0

