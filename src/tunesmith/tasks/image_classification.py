"""Image classification on a timm backbone: your photos, ImageNet weights, one new head.

Rows are image paths with a label, read from class folders or a CSV/JSONL of paths
(`tunesmith.data.images`); every image is decoded in the preflight, before any weights load.
The model comes from `tunesmith.models.timm_models` (timm names, hub, local weights files with a
checked key map, `demo:efficientnet-lite0`), its mean, std, input size and crop from its own
pretrained config. Training images get the augmentation preset and optional mixup/cutmix
(`tunesmith.strategies.augmentation`), all keyed on (seed, epoch, index); evaluation resizes and
centre-crops. `best/` is `model.safetensors` + timm's `config.json`, loadable by plain timm.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tunesmith.config import RunConfig, Section
from tunesmith.data.images import ImageDataset, check_images, read_images, split_folders
from tunesmith.data.labelled import LabelledRows, check_known_labels, label_names_of, sample, stratified_split
from tunesmith.errors import ConfigError, DataError
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.models.timm_models import create_timm_model, load_timm, save_timm, timm_folder, timm_layer_groups
from tunesmith.strategies.augmentation import eval_transform, is_random, key_seed, mix_batch, mixes, train_transform
from tunesmith.tasks import ClassWeights, OneOutputPerRow, label_ids, label_probabilities, register_task, stacked
from tunesmith.tasks._calibration import TemperatureScaling

log = logging.getLogger("tunesmith")


class ImageClassificationConfig(Section):
    image_column: str = "image"
    """Column holding the image path in a CSV/JSONL file."""
    image_root: str | None = None
    """Folder that relative paths in `image_column` start from (default: the file's own folder)."""
    image_size: int | None = Field(None, gt=0)
    """Train and evaluate at this square size instead of the model's pretrained input size (CNNs
    only; smaller is faster, usually less accurate)."""


@register_task("image-classification")
class ImageClassificationTask(OneOutputPerRow):
    name: ClassVar[str]  # set by @register_task
    metric_names: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1", "roc_auc")
    settings: ClassVar[type[Section] | None] = ImageClassificationConfig
    supports_activation_cache: ClassVar[bool] = True  # with augmentation `none`: the same pixels, so the same frozen features

    @property
    def options(self) -> ImageClassificationConfig:
        """This task's section, `config.image_classification`, typed (the assembled schema adds that field)."""
        return self.config.task_settings

    def __init__(self, config: RunConfig):
        self.config = config
        self.image_key = self.options.image_column
        self.train_rows: LabelledRows | None = None
        self.class_weights = ClassWeights()  # training.class_weights: balanced
        self.calibration = TemperatureScaling()  # fitted on validation, saved as calibration.json
        self.eval_rows: LabelledRows | None = None
        self.label_names: list[str] = []
        self.bad_images: dict[str, list[dict[str, Any]]] = {}
        self.data_config: dict[str, Any] = {}  # mean, std, input_size, crop_pct, interpolation
        self.channels_last = False
        self.truncated = 0  # images are resized, never cut
        self.fresh_head = False  # build_model: the head starts untrained, so the baseline also probes the features

    # ---- data -------------------------------------------------------------------------------

    @property
    def input_columns(self) -> list[str]:
        return [self.image_key]

    def preflight(self) -> None:
        """Reads the rows, splits them, and decodes every image that will be used."""
        d, seed = self.config.data, self.config.training.seed
        if d.train is None and d.validation is None:
            raise DataError("no data given: set data.train (an image folder or a CSV/JSONL of paths)")
        if d.train is not None:
            train_path: str | Path = d.train
            val_path: str | Path | None = d.validation
            pair = split_folders(Path(d.train)) if val_path is None and Path(d.train).is_dir() else None
            if pair:
                train_path, val_path = pair
            train = self._read(train_path)
            if val_path is None:
                train, val = stratified_split(train, d.validation_split, seed)
            else:
                val = self._read(val_path)
            self.label_names = label_names_of(train)
            self.train_rows = self._checked("train", sample(train, d.max_train_samples, seed))
        elif d.validation is not None:
            self.label_names = self._label_names_from_model()
            val = self._read(d.validation)
        check_known_labels(val, self.label_names)
        self.eval_rows = self._checked("validation", sample(val, d.max_eval_samples, seed))

    def _read(self, path: str | Path, labelled: bool = True) -> LabelledRows:
        d = self.config.data
        return read_images(path, self.image_key, d.label_column, self.options.image_root, d.bad_rows,
                           labelled=labelled)

    def _checked(self, split: str, rows: LabelledRows) -> LabelledRows:
        kept, self.bad_images[split] = check_images(rows, self.image_key, self.config.data.bad_rows)
        return kept

    def unlabelled_rows(self, path: str) -> LabelledRows:
        """Images to predict: a folder (searched recursively) or a CSV/JSONL with `image_column`."""
        return self._checked("predict", self._read(path, labelled=False))

    def _label_names_from_model(self) -> list[str]:
        import json

        source = self.config.model.source
        if source.startswith("demo:") or not Path(source).expanduser().exists():
            raise DataError(f"no training data, and {source!r} has no label names of its own: set data.train, or "
                            "evaluate a fine-tuned model (a run directory or its best/ folder)")
        config = json.loads((timm_folder(Path(source).expanduser()) / "config.json").read_text(encoding="utf-8"))
        return list(config.get("label_names") or [])

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"labels": self.label_names}
        for split, rows in (("train", self.train_rows), ("validation", self.eval_rows)):
            if rows is not None:
                facts[split] = {"source": rows.source, "rows": len(rows), "skipped": rows.skipped,
                                "label_counts": dict(Counter(rows.labels))}
        facts["unusable_images"] = self.bad_images
        facts["preprocessing"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config.items()}
        return facts

    # ---- model ------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        m = self.config.model
        model = create_timm_model(m.source, len(self.label_names), m.architecture, m.pretrained)
        # create_timm_model zeroes every head it does not take from the weights (timm_models.zero_head):
        # a zero head scores every class alike, chance by construction.
        self.fresh_head = m.pretrained and not any(p.any() for p in model.get_classifier().parameters())  # type: ignore[operator]  # torch types Module.__getattr__ as Tensor | Module
        return self._prepare(model)

    def load_trained(self) -> nn.Module:
        """Loads a fine-tuned model as saved (head and label names included), for evaluate/predict."""
        folder = Path(self.config.model.source).expanduser()
        model, self.label_names = load_timm(folder)
        self.calibration.read(timm_folder(folder))  # a run directory keeps it in best/
        return self._prepare(model)

    def _prepare(self, model: nn.Module) -> nn.Module:
        from timm.data import resolve_model_data_config

        size = self.options.image_size
        cfg: dict[str, Any] = model.pretrained_cfg  # type: ignore[assignment]  # torch types Module.__getattr__ as Tensor | Module
        if size and cfg.get("fixed_input_size"):
            raise ConfigError([f"image_classification.image_size: {cfg.get('architecture')} takes a fixed input size "
                               f"{tuple(cfg['input_size'][1:])}; remove image_classification.image_size"])
        self.data_config = resolve_model_data_config(model, args={"img_size": size} if size else None)
        choice = self.config.model.channels_last
        self.channels_last = torch.cuda.is_available() if choice == "auto" else bool(choice)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        return timm_layer_groups(model, self.config.model.train_batchnorm)

    def card_usage(self) -> str:
        return (
            "```python\nimport timm, torch\nfrom PIL import Image\n"
            'model = timm.create_model("local-dir:path/to/best", pretrained=True).eval()\n'
            "transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))\n"
            'labels = model.pretrained_cfg["label_names"]\n'
            'probs = model(transform(Image.open("photo.jpg").convert("RGB"))[None]).softmax(-1)\n```'
        )

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        save_timm(model, folder, self.label_names, self.data_config, weights)
        self.calibration.write(folder)

    # ---- tensors ----------------------------------------------------------------------------

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> ImageDataset:
        """Images decoded on access; training ones augmented with draws keyed on (seed, epoch, index)."""
        ids = {n: i for i, n in enumerate(self.label_names)}
        labels = [ids[label] for label in rows.labels] if labelled else None
        if train:
            aug = self.config.augmentation
            transform = train_transform(self.data_config, aug)
            seed = self.config.training.seed if is_random(aug) else None  # None: the same pixels every epoch
            return ImageDataset(rows.inputs[self.image_key], labels, transform, seed=seed)
        return ImageDataset(rows.inputs[self.image_key], labels, eval_transform(self.data_config))

    def lengths(self, dataset: ImageDataset) -> None:
        return None

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """(B, C, H, W) pixels and (B,) labels; training batches under mixup/cutmix also get
        (B, num_classes) soft `targets`, drawn from a generator keyed on (seed, epoch, first row)."""
        if "pixel_values" in features[0]:
            batch = {"pixel_values": torch.stack([f["pixel_values"] for f in features])}
        else:  # the activation cache replays the frozen backbone's outputs; the model never reads these
            batch = {"pixel_values": torch.zeros((len(features), 3, 1, 1))}
        if "labels" not in features[0]:
            return batch
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        aug = self.config.augmentation
        if "epoch" in features[0] and mixes(aug):
            rng = np.random.default_rng(key_seed(self.config.training.seed, features[0]["epoch"], features[0]["index"]))
            batch["pixel_values"], batch["targets"] = mix_batch(
                batch["pixel_values"], batch["labels"], len(self.label_names), aug,
                self.config.training.label_smoothing_factor, rng)
        return batch

    # ---- loss, metrics, predictions ---------------------------------------------------------

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = batch["pixel_values"]
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return model(pixels)  # (B, num_classes)

    def pooled_features(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) the backbone's pooled features, the classifier's input (timm's `pre_logits`)."""
        pixels = batch["pixel_values"]
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return model.forward_head(model.forward_features(pixels), pre_logits=True)  # type: ignore[operator]  # torch types Module.__getattr__ as Tensor | Module

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.forward(model, batch)
        weight = self.class_weights(self.config, self.train_rows, self.label_names, logits.device)
        if "targets" in batch:  # mixed batch: soft targets already carry the label smoothing
            return F.cross_entropy(logits.float(), batch["targets"], weight=weight), logits
        loss = F.cross_entropy(logits.float(), batch["labels"], weight=weight,
                               label_smoothing=self.config.training.label_smoothing_factor)
        return loss, logits

    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]:
        """Top-1 accuracy, macro F1, per-class table, confusion matrix, ROC AUC, calibration before and
        after temperature scaling (tasks/_calibration.py); top-5 with more than 5 classes."""
        logits, labels = stacked(outputs, len(self.label_names)), label_ids(rows, self.label_names)
        results = self.calibration.scores(logits, labels, self.label_names,
                                          fit=rows is self.eval_rows and self.train_rows is not None)
        if len(self.label_names) > 5:
            top5 = np.argsort(-logits, axis=-1)[:, :5]
            results["top5_accuracy"] = float((top5 == labels[:, None]).any(axis=1).mean()) if len(labels) else 0.0
        return results

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        """One record per image: its path, the predicted label and the probability of each label."""
        return [{self.image_key: path, **record}
                for path, record in zip(rows.inputs[self.image_key], label_probabilities(outputs, self.label_names, self.calibration.temperature))]
