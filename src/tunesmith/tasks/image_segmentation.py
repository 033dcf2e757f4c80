"""Semantic image segmentation on torchvision's models: a class for every pixel, scored by IoU and Dice.

Rows pair an image with its mask: a COCO instances JSON (polygons or RLE), a folder of `images/`
and `masks/`, or a table of both paths (`tunesmith.data.masks`); every pair is decoded and checked
in the preflight (sizes agree, class indices known) before any weights load. The model comes from
`tunesmith.models.torchvision_segmentation`: LR-ASPP, DeepLabV3 or FCN, on a pre-trained trunk
(`demo:mobilenet-v2`, a trunk's weights file) or a whole torchvision model, with a new output for the
user's classes. Training pairs are augmented together (`tasks/_segmentation.py`); evaluation runs
whole images. `best/` is `model.safetensors` + `config.json`, loadable into the plain torchvision
module the model card shows; `predict` writes each class map as a PNG beside the predictions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tunesmith.config import RunConfig, Section
from tunesmith.data.file_rows import check_files
from tunesmith.data.labelled import LabelledRows, random_split, sample
from tunesmith.data.masks import (
    DETECTION_INSTALL, IGNORE, SEGMENTATION_IMAGES, MaskReader, pair_problem, read_segmentation)
from tunesmith.errors import ConfigError, DataError
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.models.torchvision_segmentation import (
    builder_code, create_segmentation_model, load_segmentation, save_segmentation, saved_spec,
    segmentation_layer_groups)
from tunesmith.report.segmentation_metrics import segmentation_metrics
from tunesmith.tasks import register_task
from tunesmith.tasks._segmentation import (
    PairTransform, SegmentationDataset, class_maps, coco_results, dice_loss, pad_batch, write_mask, write_overlay)

log = logging.getLogger("tunesmith")

COCO_RESULTS = "segmentation_results.json"


class ImageSegmentationConfig(Section):
    image_column: str = "image"
    """Column holding the image path in a CSV/JSONL table of pairs."""
    mask_column: str = "mask"
    """Column holding the mask path in a CSV/JSONL table of pairs."""
    image_root: str | None = None
    """Folder that relative image and mask paths start from (default: the JSON's or table's own folder)."""
    mask_values: Literal["classes", "instances"] = "classes"
    """What a mask PNG's pixel values are: `classes`, the class index (0 background, 255 ignored);
    `instances`, an object id (16-bit instance masks), every non-zero one the single object class."""
    class_names: list[str] | None = None
    """Names of the classes, index 0 first (the background). Default: COCO's categories after
    `background`; for masks, `background` and `class_<i>` up to the largest index in the training masks."""
    head: Literal["lraspp", "deeplabv3", "fcn"] = "lraspp"
    """The segmentation head put on a trunk (`demo:mobilenet-v2`, a classifier's weights file):
    torchvision's LR-ASPP (light, reads stride 8 and 32), DeepLabV3 (ASPP) or FCN."""
    crop_size: int = Field(256, gt=0)
    """Side of the square training crops (`light`/`strong` augmentation); smaller images are padded."""
    scale_range: tuple[float, float] = (0.5, 2.0)
    """Random rescaling of training images before the crop (`light`/`strong` augmentation)."""
    vflip: bool = False
    """Also flip training images upside down at random (microscopy, aerial and satellite images)."""
    loss: Literal["cross_entropy", "dice_ce"] = "cross_entropy"
    """Per-pixel cross-entropy, or cross-entropy plus soft Dice (small objects on a large background)."""


@register_task("image-segmentation")
class ImageSegmentationTask:
    name: ClassVar[str]  # set by @register_task
    metric_names: ClassVar[tuple[str, ...]] = ("miou", "dice", "pixel_accuracy")
    settings: ClassVar[type[Section] | None] = ImageSegmentationConfig
    supports_activation_cache: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {
        # A new head on a trunk: 5e-5 barely moves it in a short run. Evaluation runs whole images one
        # at a time: padding a batch to its largest image would enter the heads' image-level pooling.
        "training.learning_rate": 1e-3, "training.per_device_train_batch_size": 8,
        "training.per_device_eval_batch_size": 1,
        # NHWC: 0.32-0.40 s against 0.44-0.52 s a bf16 step of 8 crops of 256 px on a 2-core CPU (LR-ASPP).
        "model.channels_last": True}
    pipeline_tag: ClassVar[str] = "image-segmentation"
    dynamic_axes: ClassVar[dict[str, tuple[int, ...]]] = {"pixel_values": (2, 3), "sizes": ()}  # ONNX: whole images

    @property
    def options(self) -> ImageSegmentationConfig:
        """This task's section, `config.image_segmentation`, typed (the assembled schema adds that field)."""
        return self.config.task_settings

    def __init__(self, config: RunConfig):
        self.config = config
        self.image_key = self.options.image_column
        self.reader = MaskReader(self.options.mask_values)
        self.train_rows: LabelledRows | None = None
        self.eval_rows: LabelledRows | None = None
        self.label_names: list[str] = []
        self.bad_pairs: dict[str, list[dict[str, Any]]] = {}
        self.spec: dict[str, Any] = {}
        self.channels_last = False
        self.truncated = 0  # images are never cut

    # ---- data -------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Reads the pairs, splits them, and decodes and checks every image and mask that will be used."""
        d, seed = self.config.data, self.config.training.seed
        if d.train is None and d.validation is None:
            raise DataError("no data given: set data.train (a COCO JSON, a folder with images/ and masks/, or a "
                            "CSV/JSONL of image and mask paths)")
        names = self.options.class_names
        if d.train is not None:
            train, coco_names = self._read(d.train)
            if d.validation is None:
                train, val = random_split(train, d.validation_split, seed)
            else:
                val, _ = self._read(d.validation)
            train = sample(train, d.max_train_samples, seed)
            tops: dict[str, int] = {}
            self.train_rows = self._checked("train", train, names or coco_names, tops)
            self.label_names = names or coco_names or self._numbered(tops)
        else:
            val, coco_names = self._read(d.validation)  # type: ignore[arg-type]  # one of the two is set
            self.label_names = self._names_from_model()
        self.eval_rows = self._checked("validation", sample(val, d.max_eval_samples, seed), self.label_names)

    def _read(self, path: str) -> tuple[LabelledRows, list[str] | None]:
        o = self.options
        return read_segmentation(path, o.image_column, o.mask_column, o.image_root, self.reader)

    def _checked(self, split: str, rows: LabelledRows, names: list[str] | None,
                 tops: dict[str, int] | None = None) -> LabelledRows:
        masks = dict(zip(rows.inputs[self.image_key], rows.labels))
        count = len(names) if names else None

        def problem(image: str) -> str | None:
            return pair_problem(image, masks[image], self.reader, count, tops)

        kept, self.bad_pairs[split] = check_files(SEGMENTATION_IMAGES, rows, self.image_key, self.config.data.bad_rows,
                                                  problem, "fix or remove those pairs")
        return kept

    @staticmethod
    def _numbered(tops: dict[str, int]) -> list[str]:
        top = max(tops.values(), default=0)
        if top == 0:
            raise DataError("every training mask is all background (0): there is no class to learn; check "
                            "image_segmentation.mask_values (instances for instance-id masks)")
        return ["background", *[f"class_{i}" for i in range(1, top + 1)]]

    def _names_from_model(self) -> list[str]:
        source = self.config.model.source
        if source.startswith(("demo:", "torchvision:")) or not Path(source).expanduser().exists():
            if self.options.class_names:
                return self.options.class_names
            raise DataError(f"no training data, and {source!r} has no class names of its own: set data.train, "
                            "image_segmentation.class_names, or evaluate a fine-tuned run (its best/ folder)")
        return list(saved_spec(Path(source).expanduser())["label_names"])

    def unlabelled_rows(self, path: str) -> LabelledRows:
        """Images to predict: a folder of images, or a table with `image_column` (masks not needed)."""
        from tunesmith.data.images import check_images, read_images

        rows = read_images(path, self.image_key, None, self.options.image_root, self.config.data.bad_rows,
                           labelled=False)
        kept, self.bad_pairs["predict"] = check_images(rows, self.image_key, self.config.data.bad_rows)
        return kept

    def check_labels(self, rows: LabelledRows) -> None:
        """Nothing more to check before evaluating a saved model: the labels are masks, and the preflight
        has checked each against the model's classes (the generic check compares label names)."""

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"labels": self.label_names}
        for split, rows in (("train", self.train_rows), ("validation", self.eval_rows)):
            if rows is not None:
                facts[split] = {"source": rows.source, "rows": len(rows), "unit": "images", "skipped": rows.skipped}
        facts["unusable_pairs"] = self.bad_pairs
        return facts

    # ---- model ------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        m = self.config.model
        model, self.spec = create_segmentation_model(m.source, len(self.label_names), m.architecture,
                                                     self.options.head, m.pretrained)
        return self._prepare(model)

    def load_trained(self) -> nn.Module:
        """Loads a fine-tuned model as saved (its class names included), for evaluate/predict."""
        model, self.spec = load_segmentation(Path(self.config.model.source).expanduser())
        self.label_names = list(self.spec["label_names"])
        return self._prepare(model)

    def _prepare(self, model: nn.Module) -> nn.Module:
        choice = self.config.model.channels_last
        self.channels_last = torch.cuda.is_available() if choice == "auto" else bool(choice)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        return segmentation_layer_groups(model, self.config.model.train_batchnorm)

    def card_usage(self) -> str:
        spec = {k: v for k, v in self.spec.items() if k not in ("folder", "label_names", "tunesmith_task")}
        return ("```python\nimport torch\nfrom safetensors.torch import load_file\n" + builder_code(spec) + "\n"
                'model.load_state_dict(load_file("path/to/best/model.safetensors"))\nmodel.eval()\n'
                f"# inputs: RGB scaled to [0, 1], normalized with mean {spec.get('mean')} and std {spec.get('std')}\n"
                'classes = model(pixels)["out"].argmax(1)  # (B, H, W) class indices\n```')

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        save_segmentation(model, folder, {k: v for k, v in self.spec.items() if k != "folder"}, self.label_names,
                          weights)

    # ---- tensors ----------------------------------------------------------------------------

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> SegmentationDataset:
        """Pairs decoded on access; training ones augmented together, keyed on (seed, epoch, index)."""
        o, aug = self.options, self.config.augmentation
        if train and aug.auto_augment not in (None, "none"):
            raise ConfigError(["augmentation.auto_augment: image segmentation has no policy that moves masks with "
                               "the pixels; remove it (the presets none, light and strong apply)"])
        mean, std = self.spec.get("mean") or [0.485, 0.456, 0.406], self.spec.get("std") or [0.229, 0.224, 0.225]
        preset = aug.preset if train else "none"
        transform = PairTransform(mean, std, preset, o.crop_size, o.scale_range, aug.hflip, o.vflip)
        seed = self.config.training.seed if preset != "none" else None
        return SegmentationDataset(rows.inputs[self.image_key], rows.labels if labelled else None, self.reader,
                                   transform, seed)

    def lengths(self, dataset: SegmentationDataset) -> list[int] | None:
        """Pixels per whole image, so evaluation batches hold images of like sizes (less padding); None for
        training crops, which all have one size."""
        if dataset.transform.scale_range is not None:
            return None
        from PIL import Image

        def pixels(path: str) -> int:
            with Image.open(path) as image:  # reads the header only
                return image.width * image.height

        return [pixels(p) for p in dataset.images]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pad_batch(features)

    # ---- loss, metrics, predictions ---------------------------------------------------------

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = batch["pixel_values"]
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return model(pixels)["out"]  # (B, K, H, W)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.forward(model, batch)
        labels = batch["labels"]
        # The mean over labelled pixels, written out so a batch of padding alone gives 0, not NaN, without
        # asking the device whether it is one (a host sync every step).
        loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum") / (labels != IGNORE).sum().clamp(min=1)
        if self.options.loss == "dice_ce":
            loss = loss + dice_loss(logits, labels)
        return loss, logits

    def batch_outputs(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
        """Per image, its (H, W) uint8 map of predicted classes at the image's own size."""
        return class_maps(outputs.detach(), batch["sizes"])

    def row_outputs(self, rows: LabelledRows, examples: list[Any]) -> list[Any]:
        return examples

    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]:
        """mIoU, foreground Dice, pixel accuracy and per-class IoU/Dice over the rows' pixels."""
        truths = [self.reader.read(ref) for ref in rows.labels]
        return segmentation_metrics(truths, outputs, self.label_names)

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        """One record per image: its path and the fraction of its pixels given to each class."""
        records = []
        for path, predicted in zip(rows.inputs[self.image_key], outputs):
            counts = np.bincount(predicted.ravel(), minlength=len(self.label_names)) / max(1, predicted.size)
            records.append({self.image_key: path, **{f"fraction_{n}": round(float(c), 6)
                                                      for n, c in zip(self.label_names, counts)}})
        return records

    def write_predicted_files(self, rows: LabelledRows, outputs: list[Any], folder: Path,
                              examples: int) -> dict[str, list[str | None]]:
        """Each class map as a palette PNG (`mask_file`) and all of them as COCO run-length results
        (`segmentation_results.json`); the first `examples` images also drawn beside their true and
        predicted masks (`overlay_image`, what the run report shows)."""
        folder.mkdir(parents=True, exist_ok=True)
        masks: list[str | None] = []
        overlays: list[str | None] = []
        labelled = bool(rows.labels) and rows.labels[0] != ""
        for i, (path, predicted) in enumerate(zip(rows.inputs[self.image_key], outputs)):
            name = f"{i:05d}_{Path(path).stem}"
            write_mask(predicted, folder / f"{name}.png")
            masks.append(str(folder / f"{name}.png"))
            if i < examples:
                truth = self.reader.read(rows.labels[i]) if labelled else None
                write_overlay(path, truth, predicted, folder / f"{name}_overlay.png")
            overlays.append(str(folder / f"{name}_overlay.png") if i < examples else None)
        if not coco_results(rows.inputs[self.image_key], outputs, self.label_names, folder / COCO_RESULTS):
            log.info("predicted masks are PNGs only; pip install %s to also write them as COCO RLE (%s)",
                     DETECTION_INSTALL, COCO_RESULTS)
        return {"mask_file": masks, "overlay_image": overlays}
