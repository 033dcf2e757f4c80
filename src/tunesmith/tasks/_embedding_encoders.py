"""The two kinds of encoder the embedding task (tasks/embedding.py) trains: text and images.

The task owns the rows, the losses and the metrics; an encoder owns what depends on the input:
the model, its layer groups and saved folder, turning rows into tensors, and embedding a batch.

- `TextEncoder`: a sentence-transformers `SentenceTransformer` (the source's transformer, its pooling
  and normalization; a plain transformers encoder gets mean pooling). Columns hold texts.
- `ImageEncoder`: a timm model without a classifier, whose pooled features are the embedding
  (`demo:face-resnet`, dlib's 128-d face ResNet, registered with timm in `models/dlib_resnet.py`, or any
  timm backbone). Columns hold image paths, relative to the file's folder or `embedding.image_root`;
  every image is decoded in the preflight. `best/` is timm's folder (`save_timm`). With
  `embedding.projection: true` the classifier is a D x D map started at the identity.

`encoder_for(config)` picks one from the source: an image `demo:`, a timm folder, weights file or
model name means images, anything else text (or `embedding.inputs` says which).
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tunesmith.config import RunConfig
from tunesmith.data.file_rows import FileKind, check_files, resolve_paths
from tunesmith.data.images import IMAGE_EXTENSIONS, ImageColumns, face_or_whole, image_problem, open_rgb
from tunesmith.data.labelled import LabelledRows
from tunesmith.data.text_limits import cap_texts, char_limit
from tunesmith.errors import ModelSourceError
from tunesmith.models.layer_groups import LayerGroup, transformer_layer_groups
from tunesmith.models.sources import loading, token_limit
from tunesmith.tasks._embedding import TRANSFORMER_PREFIX, library_quiet, module_files, with_projection

log = logging.getLogger("tunesmith")

EMBEDDING_IMAGES = FileKind("image", "images", IMAGE_EXTENSIONS, "embedding", "anchor_column", "image_root",
                            "faces/alice_1.jpg")


def encoder_for(config: RunConfig) -> TextEncoder | ImageEncoder:
    """The encoder `config.model.source` (or `embedding.inputs`) calls for."""
    choice = config.task_settings.inputs
    if choice == "auto":
        choice = "images" if is_image_source(config.model.source) else "text"
    return ImageEncoder(config) if choice == "images" else TextEncoder(config)


def is_image_source(source: str) -> bool:
    """An image `demo:`, a timm folder or run (its config.json names an `architecture`), a weights
    file, or a timm model name."""
    from tunesmith.models.demos import find_demo
    from tunesmith.models.timm_models import WEIGHT_SUFFIXES

    demo = find_demo(source)
    if demo is not None:
        return demo.modality == "image"
    path = Path(source).expanduser()
    if path.is_file() or path.suffix.lower() in WEIGHT_SUFFIXES:
        return True
    for config in (path / "config.json", path / "best" / "config.json"):
        if config.is_file():
            try:
                return "architecture" in json.loads(config.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                return False
    if path.exists():
        return False
    import timm

    return source.startswith(("timm/", "hf-hub:timm/")) or timm.is_model(source)


class TextEncoder:
    """A SentenceTransformer over token ids; `best/` loads with `SentenceTransformer(path)`."""

    inputs = "text"

    def __init__(self, config: RunConfig):
        from tunesmith.models.hf_family import HFModel

        self.config = config
        self.hf = HFModel("AutoModel", config.model)  # resolves the source; its dropout and config
        self.tokenizer: Any = None

    def build(self) -> nn.Module:
        """The source as a SentenceTransformer; under `model.pretrained: false` its transformer is
        drawn afresh from the same config (pooling and tokenizer kept)."""
        model = self.load()
        if not self.config.model.pretrained:
            from transformers import AutoModel

            model[0].model = AutoModel.from_config(model[0].model.config)
        if self.config.task_settings.projection and not any(type(m).__name__ == "Dense" for m in model.children()):
            model = with_projection(model)  # the same modules (and tokenizer) with a Dense one added
        return model

    def load(self) -> Any:
        from sentence_transformers import SentenceTransformer

        resolved = self.hf.resolved
        if resolved.gguf_file:
            raise ModelSourceError(f"{self.config.model.source} is a GGUF file; the embedding task reads transformer "
                                   "encoders (a sentence-transformers or transformers folder, or demo:minilm)")
        with loading(resolved), library_quiet():
            model = SentenceTransformer(resolved.location, device="cpu", local_files_only=resolved.local,
                                        trust_remote_code=self.config.model.trust_remote_code,
                                        config_kwargs=self.hf.dropout() or None)
        return self._ready(model)

    def _ready(self, model: Any) -> nn.Module:
        # A BERT-style pooler sits on the transformer but the embedding pools the token states itself:
        # no gradient reaches it, so it is held still and belongs to no layer group.
        for name, param in model.named_parameters():
            if ".pooler." in name:
                param.requires_grad_(False)
        self.tokenizer = model.tokenizer
        return model

    def width(self, model: nn.Module) -> int:
        """D, the embedding's size."""
        return int(model.get_embedding_dimension())  # type: ignore[operator]  # SentenceTransformer

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        """The transformer's groups (embeddings, each block), then any trained module after pooling
        (a Dense projection) as the head."""
        names = {id(p): n for n, p in model.named_parameters()}
        groups = transformer_layer_groups(model[0].model)  # type: ignore[index]  # a SentenceTransformer is a Sequential
        claimed: set[int] = set()
        for group in groups:
            group.params = [(names[id(p)], p) for _, p in group.params if p.requires_grad]
            claimed.update(id(p) for _, p in group.params)
        head = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in claimed
                and not n.startswith("0.")]
        groups = [g for g in groups if g.name != "head"]
        if head:
            groups.append(LayerGroup("head", list(model.children())[1:], head))
        return groups

    def card_usage(self) -> str:
        return ("```python\nfrom sentence_transformers import SentenceTransformer\n"
                'model = SentenceTransformer("path/to/best")\n'
                'embeddings = model.encode(["a query", "a passage"], normalize_embeddings=True)\n'
                "similarity = embeddings[0] @ embeddings[1]\n```")

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None) -> None:
        """Writes a sentence-transformers folder; `weights` (gathered from shards) replace each module's own."""
        encoder: Any = model  # a SentenceTransformer
        with library_quiet():
            encoder.save(folder, create_model_card=False)
        if weights is None:
            return
        from safetensors.torch import save_file

        for prefix, path in module_files(Path(folder)):
            own = {k[len(prefix):]: v.contiguous() for k, v in weights.items() if k.startswith(prefix)}
            if prefix == TRANSFORMER_PREFIX:  # transformers' own layout (shards, tied weights)
                encoder[0].model.save_pretrained(folder, state_dict=own)
            elif own:
                save_file(own, str(path))

    def saved_weights(self, folder: Path) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        weights = {}
        for prefix, path in module_files(folder):
            if path.is_file():
                weights.update({prefix + k: v for k, v in load_file(str(path)).items()})
        return weights

    def checked(self, rows: LabelledRows, columns: list[str]) -> LabelledRows:
        return rows

    def dataset(self, rows: LabelledRows, columns: list[str], train: bool,
                labels: list[int] | None) -> tuple[list[dict[str, Any]], int]:
        """Per row the token ids of each column, unpadded (and its label); and how many rows were cut."""
        max_length = token_limit(self.tokenizer, self.config.data.max_length)
        ids_by_column, cut = [], [False] * len(rows)
        for column in columns:
            texts, cut_here = cap_texts(rows.inputs[column], char_limit(max_length))
            ids = self.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
            cut = [a or len(i) >= max_length or b for a, i, b in zip(cut, ids, cut_here)]
            ids_by_column.append(ids)
        truncated = sum(cut)
        if truncated:
            log.info("%s: %d of %d rows had a text reach max_length=%d, truncated", rows.source, truncated, len(rows),
                     max_length)
        features: list[dict[str, Any]] = [{"texts": [ids[i] for ids in ids_by_column]} for i in range(len(rows))]
        for feature, label in zip(features, labels or []):
            feature["labels"] = label
        return features, truncated

    def lengths(self, dataset: list[dict[str, Any]]) -> list[int]:
        return [sum(len(t) for t in f["texts"]) for f in dataset]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Each text column padded to its own longest row: `input_ids_<c>` and `attention_mask_<c>`
        (B, T_c) for column c (0 anchor, 1 positive, 2 negative)."""
        batch: dict[str, torch.Tensor] = {}
        pad = self.tokenizer.pad_token_id or 0
        for c in range(len(features[0]["texts"])):
            texts = [f["texts"][c] for f in features]
            ids = torch.full((len(texts), max(map(len, texts))), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, t in enumerate(texts):
                ids[i, :len(t)] = torch.tensor(t)
                mask[i, :len(t)] = 1
            batch[f"input_ids_{c}"], batch[f"attention_mask_{c}"] = ids, mask
        return batch

    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """(B, D) sentence embeddings of each column of the batch, in column order."""
        columns: list[torch.Tensor] = []
        while f"input_ids_{len(columns)}" in batch:
            c = len(columns)
            features = {"input_ids": batch[f"input_ids_{c}"], "attention_mask": batch[f"attention_mask_{c}"]}
            columns.append(model(features)["sentence_embedding"])
        return columns

    def encode(self, model: nn.Module, inputs: list[str], batch_size: int) -> np.ndarray:
        """(N, D) unit embeddings of texts (a gallery)."""
        return model.encode(inputs, batch_size=batch_size, normalize_embeddings=True,  # type: ignore[operator]  # SentenceTransformer.encode
                            convert_to_numpy=True, show_progress_bar=False)


class ImageEncoder:
    """A timm model's pooled features (or its identity-started projection) over decoded images."""

    inputs = "images"

    def __init__(self, config: RunConfig):
        self.config = config
        self.data_config: dict[str, Any] = {}  # mean, std, input_size, crop_pct, interpolation
        self.bad_images: list[dict[str, Any]] = []
        self.crops: dict[str, Any] = {}  # embedding.face_detector: each image's FaceCrop, or None (no face)
        self.finder: Any = None  # the face detector, loaded on first use

    def build(self) -> nn.Module:
        from tunesmith.models.timm_models import create_timm_model, zero_head

        m = self.config.model
        model = create_timm_model(m.source, 0, m.architecture, m.pretrained, task="embedding")
        if self.config.task_settings.projection:
            width: int = model.num_features  # type: ignore[assignment]  # torch types Module.__getattr__ as Tensor | Module
            model.reset_classifier(width)  # type: ignore[operator]  # torch types Module.__getattr__ as Tensor | Module
            zero_head(model)
            with torch.no_grad():
                model.get_classifier().weight.copy_(torch.eye(width))  # type: ignore[operator]  # a timm classifier
        return self._ready(model)

    def load(self) -> nn.Module:
        """A saved folder (a run, its best/) as saved; any other source (a `demo:`) as `build` makes it."""
        from tunesmith.models.timm_models import load_timm

        path = Path(self.config.model.source).expanduser()
        if not path.is_dir():
            return self.build()
        model, _ = load_timm(path)
        return self._ready(model)

    def _ready(self, model: nn.Module) -> nn.Module:
        from timm.data import resolve_model_data_config

        self.data_config = resolve_model_data_config(model)
        return model

    def width(self, model: nn.Module) -> int:
        """D: the projection's size, else the pooled features'."""
        return int(model.num_classes or model.num_features)  # type: ignore[arg-type]  # a timm model

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        from tunesmith.models.timm_models import timm_layer_groups

        return timm_layer_groups(model, self.config.model.train_batchnorm)

    def card_usage(self) -> str:
        framed = ("# trained on faces found and cropped first (embedding.face_detector: demo:mtcnn): crop yours "
                  "alike\n" if self.config.task_settings.face_detector else "")
        return ("```python\nimport timm, torch\nfrom PIL import Image\n" + framed +
                "import tunesmith.models.dlib_resnet  # only for demo:face-resnet: registers dlib_face_resnet with timm\n"
                'model = timm.create_model("local-dir:path/to/best", pretrained=True).eval()\n'
                "transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))\n"
                'faces = torch.stack([transform(Image.open(p).convert("RGB")) for p in ["a.jpg", "b.jpg"]])\n'
                "embeddings = torch.nn.functional.normalize(model(faces), dim=-1)\n"
                "similarity = embeddings[0] @ embeddings[1]\n```")

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None) -> None:
        from tunesmith.models.timm_models import save_timm

        save_timm(model, folder, [], self.data_config, weights)

    def saved_weights(self, folder: Path) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))

    def checked(self, rows: LabelledRows, columns: list[str]) -> LabelledRows:
        """Each column's paths made absolute (from the file's folder or `embedding.image_root`) and every
        image decoded; a row with an unusable image is skipped or an error (`data.bad_rows`)."""
        o = self.config.task_settings
        for column in columns:
            rows.inputs[column] = resolve_paths(EMBEDDING_IMAGES, Path(rows.source), rows.inputs[column], o.image_root)
        problem = functools.cache(image_problem)  # an image in several rows or columns is decoded once
        for column in columns:
            rows, bad = check_files(EMBEDDING_IMAGES, rows, column, self.config.data.bad_rows, problem)
            self.bad_images += bad
        if o.face_detector:
            self._find_faces(rows, columns)
            for column in columns:
                rows, bad = check_files(EMBEDDING_IMAGES, rows, column, self.config.data.bad_rows,
                                        lambda p: None if self.crops[p] else "no face found",
                                        fix="crop or remove them (or leave embedding.face_detector unset)")
                self.bad_images += bad
        return rows

    def _find_faces(self, rows: LabelledRows, columns: list[str]) -> None:
        from tunesmith.data.faces import FaceFinder

        if self.finder is None:
            self.finder = FaceFinder(self.config.task_settings.face_margin)
        todo = sorted({p for c in columns for p in rows.inputs[c]} - set(self.crops))
        for path in todo:
            self.crops[path] = self.finder.find(open_rgb(path))
        if todo:
            log.info("%s: faces found in %d of %d images (demo:mtcnn)", rows.source,
                     sum(self.crops[p] is not None for p in todo), len(todo))

    def dataset(self, rows: LabelledRows, columns: list[str], train: bool,
                labels: list[int] | None) -> tuple[ImageColumns, int]:
        from tunesmith.strategies.augmentation import eval_transform, is_random, train_transform

        aug = self.config.augmentation
        paths = [rows.inputs[c] for c in columns]
        if train and is_random(aug):
            data = ImageColumns(paths, labels, train_transform(self.data_config, aug), self.crops,
                                seed=self.config.training.seed)
        else:
            data = ImageColumns(paths, labels, eval_transform(self.data_config), self.crops)
        return data, 0

    def lengths(self, dataset: ImageColumns) -> None:
        return None

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """`pixel_values_<c>` (B, C, H, W) for column c (0 anchor, 1 positive, 2 negative)."""
        return {f"pixel_values_{c}": torch.stack([f["pixels"][c] for f in features])
                for c in range(len(features[0]["pixels"]))}

    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        columns: list[torch.Tensor] = []
        while f"pixel_values_{len(columns)}" in batch:
            columns.append(model(batch[f"pixel_values_{len(columns)}"]))
        return columns

    def encode(self, model: nn.Module, inputs: list[str], batch_size: int) -> np.ndarray:
        """(N, D) unit embeddings of image paths (a gallery)."""
        from tunesmith.strategies.augmentation import eval_transform

        transform, vectors = eval_transform(self.data_config), []
        with torch.inference_mode():
            for start in range(0, len(inputs), batch_size):
                pixels = torch.stack([transform(face_or_whole(p, self.crops)) for p in inputs[start:start + batch_size]])
                vectors.append(torch.nn.functional.normalize(model(pixels).float(), dim=-1).numpy())
        return np.concatenate(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
