"""Object detection on torchvision's Faster R-CNN: boxes and classes, scored by COCO mAP.

Rows are the images of a COCO instances JSON (`tunesmith.data.coco`), each with its boxes; an image
without objects is a valid training image. Every image is decoded in the preflight and its boxes
checked against it (no area, wholly outside the image, the JSON's size not the image's: skipped or
an error). The model comes from `tunesmith.models.torchvision_detection`: a new Faster R-CNN with a
feature pyramid on a pre-trained trunk (`demo:mobilenet-v2`, a trunk's weights file) or a whole
torchvision Faster R-CNN with a new box predictor. Training images and boxes are augmented together
(`tasks/_detection.py`); evaluation runs whole images. Scores are pycocotools' COCOeval
(`report/detection_metrics.py`); `predict` writes COCO results JSON and the boxes drawn on images.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from tunesmith.config import RunConfig, Section
from tunesmith.data.coco import CocoImage, box_problem, read_coco
from tunesmith.data.file_rows import FileKind, check_files
from tunesmith.data.images import IMAGE_EXTENSIONS, image_problem
from tunesmith.data.labelled import LabelledRows, random_split, sample
from tunesmith.errors import ConfigError, DataError
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.models.torchvision_detection import builder_code, create_detector, detection_layer_groups, build
from tunesmith.models.torchvision_trunks import load_folder, save_folder, saved_folder_spec
from tunesmith.report.detection_metrics import detection_metrics
from tunesmith.tasks import register_task
from tunesmith.tasks._detection import BoxTransform, DetectionDataset, images_and_targets, pad_batch, true_boxes, write_boxes

log = logging.getLogger("tunesmith")

DETECTION_IMAGES = FileKind("image", "images", IMAGE_EXTENSIONS, "object_detection", "image_column", "image_root",
                            "a COCO instances JSON")
DETECTION_INSTALL = "'tunesmith[detection]'"
RESULTS_FILE = "detection_results.json"


class ObjectDetectionConfig(Section):
    image_column: str = "image"
    """Column holding the image path in a CSV/JSONL table of images to predict."""
    image_root: str | None = None
    """Folder that the COCO file's `file_name`s start from (default: the JSON's own folder)."""
    min_size: int = Field(512, gt=0)
    """The detector resizes each image so its shorter side is this many pixels (torchvision's `min_size`;
    larger finds smaller objects and costs more)."""
    max_size: int = Field(1024, gt=0)
    """...unless its longer side would then exceed this (torchvision's `max_size`)."""
    max_detections: int = Field(100, gt=0)
    """Boxes kept per image (and scored by mAP): raise it for dense scenes (cells, crowds)."""
    crop_size: int = Field(512, gt=0)
    """Side of the square training crops (`light`/`strong`/`weather` augmentation); smaller images are padded."""
    scale_range: tuple[float, float] = (0.5, 2.0)
    """Random rescaling of training images before the crop (`light`/`strong`/`weather` augmentation)."""
    vflip: bool = False
    """Also flip training images upside down at random (microscopy, aerial and satellite images)."""
    score_threshold: float = Field(0.5, ge=0.0, le=1.0)
    """Boxes at or above this score are counted and drawn in predictions (mAP scores all of them)."""
    class_names: list[str] | None = None
    """Class names, background first, for evaluating a model without training data (default: COCO's)."""


@register_task("object-detection")
class ObjectDetectionTask:
    name: ClassVar[str]  # set by @register_task
    metric_names: ClassVar[tuple[str, ...]] = ("map", "map_50", "map_75", "mar")
    settings: ClassVar[type[Section] | None] = ObjectDetectionConfig
    supports_activation_cache: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {
        # A new detector on a trunk: 5e-5 barely moves its heads in a short run; whole images evaluate one by one.
        "training.learning_rate": 1e-3, "training.per_device_train_batch_size": 4,
        "training.per_device_eval_batch_size": 1}
    pipeline_tag: ClassVar[str] = "object-detection"

    @property
    def options(self) -> ObjectDetectionConfig:
        """This task's section, `config.object_detection`, typed (the assembled schema adds that field)."""
        return self.config.task_settings

    def __init__(self, config: RunConfig):
        self.config = config
        self.image_key = self.options.image_column
        self.images: dict[str, CocoImage] = {}
        self.train_rows: LabelledRows | None = None
        self.eval_rows: LabelledRows | None = None
        self.label_names: list[str] = []
        self.bad_images: dict[str, list[dict[str, Any]]] = {}
        self.spec: dict[str, Any] = {}
        self.truncated = 0  # images are never cut

    # ---- data -------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Reads the COCO files, splits them, and decodes every image and checks its boxes against it."""
        d, seed = self.config.data, self.config.training.seed
        if d.train is None and d.validation is None:
            raise DataError("no data given: set data.train (a COCO instances JSON with boxes)")
        if d.train is not None:
            train, self.label_names = self._read(d.train)
            if d.validation is None:
                train, val = random_split(train, d.validation_split, seed)
            else:
                val, names = self._read(d.validation)
                if names != self.label_names:
                    raise DataError(f"{d.validation}: its categories {names[1:]} are not the training file's "
                                    f"{self.label_names[1:]}; give both files the same categories")
            self.train_rows = self._checked("train", sample(train, d.max_train_samples, seed))
        else:
            val, names = self._read(d.validation)  # type: ignore[arg-type]  # one of the two is set
            self.label_names = self._names_from_model() or names
        self.eval_rows = self._checked("validation", sample(val, d.max_eval_samples, seed))

    def _read(self, path: str) -> tuple[LabelledRows, list[str]]:
        p = Path(path).expanduser()
        if not p.is_file() or p.suffix.lower() != ".json":
            raise DataError(f"{path}: object detection reads a COCO instances JSON (images, annotations with a bbox "
                            "each, categories)")
        if importlib.util.find_spec("pycocotools") is None:
            raise DataError(f"object detection scores boxes with pycocotools: pip install {DETECTION_INSTALL}")
        return read_coco(p, DETECTION_IMAGES, self.image_key, self.options.image_root, "box", self.images)

    def _checked(self, split: str, rows: LabelledRows) -> LabelledRows:
        targets = dict(zip(rows.inputs[self.image_key], rows.labels))

        def problem(path: str) -> str | None:
            why = image_problem(path)
            if why:
                return why
            from PIL import Image

            with Image.open(path) as image:
                return box_problem(self.images[targets[path]], image.height, image.width)

        kept, self.bad_images[split] = check_files(DETECTION_IMAGES, rows, self.image_key, self.config.data.bad_rows,
                                                   problem, "fix or remove those images")
        return kept

    def _names_from_model(self) -> list[str] | None:
        source = Path(self.config.model.source).expanduser()
        if source.exists() and not self.config.model.source.startswith(("demo:", "torchvision:")):
            return list(saved_folder_spec(source, self.name)["label_names"])
        return self.options.class_names

    def _target(self, ref: str) -> CocoImage:
        """The image a row's label (`<json>#<image id>`) names; its file is read again for rows this task
        instance did not read itself (rows handed over from another)."""
        if ref not in self.images:
            self._read(ref.rsplit("#", 1)[0])
        return self.images[ref]

    def check_labels(self, rows: LabelledRows) -> None:
        """Nothing more to check before evaluating a saved model: the preflight checked every box."""

    def unlabelled_rows(self, path: str) -> LabelledRows:
        """Images to predict: a folder of images, or a table with `image_column`."""
        from tunesmith.data.images import check_images, read_images

        rows = read_images(path, self.image_key, None, self.options.image_root, self.config.data.bad_rows,
                           labelled=False)
        kept, self.bad_images["predict"] = check_images(rows, self.image_key, self.config.data.bad_rows)
        return kept

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"labels": self.label_names}
        for split, rows in (("train", self.train_rows), ("validation", self.eval_rows)):
            if rows is not None:
                objects = Counter(self.label_names[o.cls] for ref in rows.labels for o in self.images[ref].objects)
                facts[split] = {"source": rows.source, "rows": len(rows), "unit": "images", "skipped": rows.skipped,
                                "objects": dict(objects)}
        facts["unusable_images"] = self.bad_images
        return facts

    # ---- model ------------------------------------------------------------------------------

    def _sizes(self) -> dict[str, int]:
        o = self.options
        return {"min_size": o.min_size, "max_size": o.max_size, "max_detections": o.max_detections}

    def build_model(self) -> nn.Module:
        m = self.config.model
        model, self.spec = create_detector(m.source, len(self.label_names), m.architecture, self._sizes(), m.pretrained)
        return _refusing_onnx(model)

    def load_trained(self) -> nn.Module:
        """Loads a fine-tuned detector as saved (class names included), for evaluate/predict."""
        model, self.spec = load_folder(Path(self.config.model.source).expanduser(), self.name, build)
        self.label_names = list(self.spec["label_names"])
        return _refusing_onnx(model)

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        return detection_layer_groups(model)

    def card_usage(self) -> str:
        spec = {k: v for k, v in self.spec.items() if k not in ("folder", "label_names", "tunesmith_task")}
        return ("```python\nimport torch\nfrom safetensors.torch import load_file\n" + builder_code(spec) + "\n"
                'model.load_state_dict(load_file("path/to/best/model.safetensors"))\nmodel.eval()\n'
                "# inputs: a list of (3, H, W) RGB tensors scaled to [0, 1]; the model normalises and resizes them\n"
                "found = model([image])[0]  # boxes (x0, y0, x1, y1), labels, scores\n```")

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        save_folder(model, folder, {k: v for k, v in self.spec.items() if k != "folder"}, self.label_names, self.name,
                    weights)

    # ---- tensors ----------------------------------------------------------------------------

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> DetectionDataset:
        """Images with their boxes decoded on access; training ones augmented together, keyed on (seed, epoch, index)."""
        o, aug = self.options, self.config.augmentation
        if train and aug.auto_augment not in (None, "none"):
            raise ConfigError(["augmentation.auto_augment: object detection has no policy that moves boxes with the "
                               "pixels; remove it (the presets none, light, strong and weather apply)"])
        preset = aug.preset if train else "none"
        transform = BoxTransform(preset, o.crop_size, o.scale_range, aug.hflip, o.vflip)
        targets = [self._target(ref) for ref in rows.labels] if labelled else None
        return DetectionDataset(rows.inputs[self.image_key], targets, transform,
                                self.config.training.seed if preset != "none" else None)

    def lengths(self, dataset: DetectionDataset) -> None:
        return None

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pad_batch(features)

    # ---- loss, metrics, predictions ---------------------------------------------------------

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        images, _ = images_and_targets(batch)
        return model(images)  # in eval mode: per image boxes (N, 4), labels (N,), scores (N,)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """The detector's summed losses (RPN and box head); evaluating, also its detections. torchvision's
        detectors give losses in training mode only, so validation runs that mode once without changing
        anything (frozen BatchNorm, no dropout), its proposal sampling kept off the run's generator."""
        images, targets = images_and_targets(batch)
        if model.training:
            return sum(model(images, targets).values()), None
        with torch.random.fork_rng(devices=[]):
            model.train()
            try:
                losses = model(images, targets)
            finally:
                model.eval()
        return sum(losses.values()), model(images)

    def batch_outputs(self, outputs: list[dict[str, torch.Tensor]], batch: dict[str, torch.Tensor]) -> list[dict[str, np.ndarray]]:
        """Per image, its boxes (N, 4) in the image's pixels, scores (N,) and classes (N,)."""
        return [{k: v.detach().float().cpu().numpy() if k != "labels" else v.cpu().numpy() for k, v in found.items()}
                for found in outputs]

    def row_outputs(self, rows: LabelledRows, examples: list[Any]) -> list[Any]:
        return examples

    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]:
        """COCO mAP@[.5:.95], mAP@.5, mAP@.75, average recall and per-class AP over the rows' images."""
        return detection_metrics([self._target(ref) for ref in rows.labels], outputs, self.label_names,
                                 self.options.max_detections)

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        """One record per image: its path and how many boxes of each class score at least `score_threshold`."""
        threshold = self.options.score_threshold
        return [{self.image_key: path, **{f"count_{n}": int(((found["labels"] == c) & (found["scores"] >= threshold)).sum())
                                          for c, n in enumerate(self.label_names) if c}}
                for path, found in zip(rows.inputs[self.image_key], outputs)]

    def write_predicted_files(self, rows: LabelledRows, outputs: list[Any], folder: Path,
                              examples: int) -> dict[str, list[str | None]]:
        """Every box as COCO results (`detection_results.json`: file_name, category_id = class index, bbox
        [x, y, w, h], score); the first `examples` images drawn with their true and predicted boxes
        (`boxes_image`, what the run report shows)."""
        folder.mkdir(parents=True, exist_ok=True)
        results, drawn = [], []
        labelled = bool(rows.labels) and "#" in rows.labels[0]
        for i, (path, found) in enumerate(zip(rows.inputs[self.image_key], outputs)):
            for box, score, cls in zip(found["boxes"], found["scores"], found["labels"]):
                x0, y0, x1, y1 = (round(float(v), 2) for v in box)
                results.append({"file_name": path, "category_id": int(cls), "category": self.label_names[int(cls)],
                                "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)], "score": round(float(score), 5)})
            picture = folder / f"{i:05d}_{Path(path).stem}_boxes.png"
            if i < examples:
                truth = true_boxes(self._target(rows.labels[i])) if labelled else None
                write_boxes(path, truth, found, self.options.score_threshold, picture)
            drawn.append(str(picture) if i < examples else None)
        (folder / RESULTS_FILE).write_text(json.dumps(results) + "\n", encoding="utf-8")
        return {"boxes_image": drawn}


def _refusing_onnx(model: nn.Module) -> nn.Module:
    """Marks the detector for `tunesmith export`, which traces one tensor-to-tensor graph: a detector's
    output is a list of variable-length box sets (proposal selection and NMS inside)."""
    model.onnx_refusal = ("object detection is not exported by `tunesmith export` (its outputs are per-image box lists); "  # type: ignore[assignment]  # a plain attribute the exporter reads
                          "best/ is a plain torchvision Faster R-CNN: export it with torch.onnx.export(model, ...) as "
                          "torchvision's detection docs show")
    return model
