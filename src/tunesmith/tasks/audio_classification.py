"""Audio classification (spoken keywords and digits, speakers, sound classes) on a pre-trained audio encoder.

Rows are audio clips with a label: class folders (`train/yes/*.wav`), `train/` + `val/` folders of
them, or a CSV/JSONL of paths and labels (`tunesmith.data.audio`). Every clip is opened in the
preflight, before any weights load; unreadable, empty, silent and too-long clips are named by path
and skipped or refused as `data.bad_rows` says. Clips are decoded with soundfile, averaged to mono
and resampled to the model's rate (16 kHz) as they are batched. The model is the source's
`AutoModelForAudioClassification`: for Whisper (`demo:whisper-tiny-en`, `openai/whisper-small`)
transformers' `WhisperForAudioClassification`, its encoder with a new projection and classifier on
the mean of its states; for wav2vec2, HuBERT or WavLM their own classification heads. A CTranslate2
Whisper is converted once into a cached transformers folder (`models/converted.py`): one loading
path for every source, and later runs skip the conversion. `best/` loads with plain transformers.

Whisper's encoder runs over the batch's longest clip, not 30 s, with the padding masked
(`audio_classification.whisper_input: crop`, tasks/_audio.py), and the head averages each clip's own
states, so a clip scores as it would alone. transformers' forward (and `pipeline("audio-classification")`)
pads to 30 s, which such a model never saw (a crop-trained FSDD digit model scores 0.83 that way,
1.00 cropped): the model card shows the lines of plain transformers that run it as trained.
`whisper_input: pad` trains and scores exactly as transformers' forward does, at 30 s of compute per clip.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.config import RunConfig, Section
from tunesmith.data.audio import AudioClips, audio_seconds, read_audio_rows
from tunesmith.data.file_rows import split_folders
from tunesmith.data.labelled import LabelledRows, check_known_labels, label_names_of, sample, stratified_split
from tunesmith.errors import DataError
from tunesmith.models.demos import check_task
from tunesmith.models.hf_family import HFModel
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.models.sources import ResolvedSource, source_label_names
from tunesmith.tasks import ClassWeights, OneOutputPerRow, label_ids, label_probabilities, register_task, stacked
from tunesmith.tasks._audio import (
    AudioModel,
    AudioSettings,
    checked_clips,
    masked_mean,
    set_model_spec_augment,
    spec_augmented,
    whisper_features,
    whisper_states,
)
from tunesmith.tasks._calibration import TemperatureScaling

log = logging.getLogger("tunesmith")


class AudioClassificationConfig(AudioSettings):
    """`audio_classification`: only the keys every audio task has (tasks/_audio.py)."""


def feature_extractor(resolved: ResolvedSource, kwargs: dict[str, Any]) -> Any:
    """The source's feature extractor (log-mel for Whisper, normalised waveform for wav2vec2), its "tokenizer"."""
    from transformers import AutoFeatureExtractor

    return AutoFeatureExtractor.from_pretrained(resolved.location, **kwargs)


@register_task("audio-classification")
class AudioClassificationTask(OneOutputPerRow):
    name: ClassVar[str]  # set by @register_task
    metric_names: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1", "roc_auc")
    settings: ClassVar[type[Section] | None] = AudioClassificationConfig
    # Whisper's encoder attends over every frame it is given: under `pad` a frozen prefix's output
    # would repeat, but under `crop` it is only exact with the mask this task builds, which the
    # cache's replay (zero-padded rows) does not reproduce. So nothing is recorded and replayed.
    supports_activation_cache: ClassVar[bool] = False
    pipeline_tag = "audio-classification"  # the Hub's name for the task

    @property
    def options(self) -> AudioClassificationConfig:
        """This task's section, `config.audio_classification`, typed (the assembled schema adds that field)."""
        return self.config.task_settings

    def __init__(self, config: RunConfig):
        check_task(config.model.source, self.name)
        self.config = config
        self.audio_key = self.options.audio_column
        self.source = AudioModel("AutoModelForAudioClassification", config.model, feature_extractor)
        self.train_rows: LabelledRows | None = None
        self.class_weights = ClassWeights()  # training.class_weights: balanced
        self.calibration = TemperatureScaling()  # fitted on validation, saved as calibration.json
        self.eval_rows: LabelledRows | None = None
        self.label_names: list[str] = []
        self.bad_clips: dict[str, list[dict[str, Any]]] = {}
        self.extractor: Any = None  # the source's feature extractor, read with the model
        self.truncated = 0  # clips are never cut: too-long ones are refused in the preflight
        self.fresh_head = False  # build_model: the head starts untrained, so the baseline also probes the features

    @property
    def hf(self) -> HFModel:
        return self.source.hf

    @property
    def whisper(self) -> bool:
        return self.source.whisper

    # ---- data -------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Reads the rows, splits them, and opens every clip that will be used."""
        d, seed = self.config.data, self.config.training.seed
        if d.train is None and d.validation is None:
            raise DataError("no data given: set data.train (a folder of class folders of clips, or a CSV/JSONL of paths)")
        if d.train is not None:
            train_path, val_path = d.train, d.validation
            pair = split_folders(Path(d.train)) if val_path is None and Path(d.train).is_dir() else None
            if pair:
                train_path, val_path = str(pair[0]), str(pair[1])
            train = self._read(train_path)
            val = self._read(val_path) if val_path is not None else None
            if val is None:
                train, val = stratified_split(train, d.validation_split, seed)
            self.label_names = label_names_of(train)
            self.train_rows = self._checked("train", sample(train, d.max_train_samples, seed))
        else:
            val = self._read(str(d.validation))
            self.label_names = self._label_names_from_model()
        check_known_labels(val, self.label_names)
        self.eval_rows = self._checked("validation", sample(val, d.max_eval_samples, seed))

    def _read(self, path: str, labelled: bool = True) -> LabelledRows:
        d, o = self.config.data, self.options
        return read_audio_rows(self.name.replace("-", "_"), path, self.audio_key, d.label_column, o.audio_root,
                               d.bad_rows, labelled=labelled)

    def _checked(self, split: str, rows: LabelledRows) -> LabelledRows:
        kept, self.bad_clips[split] = checked_clips(self.name.replace("-", "_"), rows, self.audio_key,
                                                    self.config.data.bad_rows, self.options, self.whisper)
        return kept

    def unlabelled_rows(self, path: str) -> LabelledRows:
        """Clips to predict: a folder (searched recursively) or a CSV/JSONL with `audio_column`."""
        return self._checked("predict", self._read(path, labelled=False))

    def _label_names_from_model(self) -> list[str]:
        architectures = getattr(self.hf.model_config(), "architectures", None) or []
        if not any(a.endswith(("ForAudioClassification", "ForSequenceClassification")) for a in architectures):
            raise DataError(f"no training data, and {self.config.model.source} has no trained classification head "
                            "with label names of its own: set data.train, or evaluate a fine-tuned model (a run "
                            "directory or its best/ folder)")
        return source_label_names(self.hf.resolved, self.config.model.trust_remote_code)

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"labels": self.label_names}
        for split, rows in (("train", self.train_rows), ("validation", self.eval_rows)):
            if rows is not None:
                seconds = [audio_seconds(p) for p in rows.inputs[self.audio_key]]
                facts[split] = {"source": rows.source, "rows": len(rows), "skipped": rows.skipped,
                                "label_counts": dict(Counter(rows.labels)),
                                "seconds": {"mean": round(float(np.mean(seconds)), 3), "max": round(max(seconds), 3)}}
        facts["unusable_clips"] = self.bad_clips
        if self.extractor is not None:
            facts["preprocessing"] = {"sampling_rate": self.rate, "mono": True,
                                      "whisper_input": self.options.whisper_input if self.whisper else None}
        return facts

    # ---- model ------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        """The source's encoder with a new head for these labels; under `model.pretrained: false`
        the same architecture from random initialization, with the source's feature extractor."""
        names = self.label_names
        model = self.hf.build({"num_labels": len(names), "id2label": dict(enumerate(names)),
                               "label2id": {n: i for i, n in enumerate(names)}})
        self.extractor = self.hf.tokenizer
        self.fresh_head = self.hf.fresh_head
        if not self.whisper:
            set_model_spec_augment(model, self.options.spec_augment)
        return model

    def load_trained(self) -> nn.Module:
        """Loads a fine-tuned model as saved (head and labels included), for evaluate/predict."""
        model = self.hf.load_trained()
        self.extractor = self.hf.tokenizer
        if self.hf.resolved.local:
            self.calibration.read(self.hf.resolved.location)
        self.label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]  # type: ignore[index, arg-type]  # a saved classifier's config has both; transformers types them Optional
        return model

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        return self.hf.layer_groups(model)

    def card_usage(self) -> str:
        load = ("```python\nimport numpy, torch\nfrom transformers import AutoFeatureExtractor, AutoModelForAudioClassification\n"
                'model = AutoModelForAudioClassification.from_pretrained("path/to/best").eval()\n'
                'extractor = AutoFeatureExtractor.from_pretrained("path/to/best")\n')
        if not (self.whisper and self.options.whisper_input == "crop"):
            return (load + 'inputs = extractor(samples_16khz_mono, sampling_rate=16000, return_tensors="pt")\n'
                    "with torch.no_grad():\n    logits = model(**inputs).logits\n"
                    "label = model.config.id2label[logits.argmax(-1).item()]\n```")
        # transformers' forward would pad the clip to 30 s, which this model never saw in training
        # (on spoken digits it scores 0.83 that way, 1.00 cropped): run the encoder as the task did.
        return (
            "Trained on clips at their own length (`audio_classification.whisper_input: crop`), not padded to 30 s "
            "as transformers' own forward and `pipeline` pad them, so run the encoder over the clip's frames:\n\n"
            + load
            + "clip = numpy.pad(samples_16khz_mono, (0, 400))  # and 25 ms of silence after it, as in training\n"
            'features = extractor(clip, sampling_rate=16000, padding="longest", return_tensors="pt").input_features\n'
            "encoder, gelu = model.encoder, torch.nn.functional.gelu\n"
            "with torch.no_grad():\n"
            "    states = gelu(encoder.conv2(gelu(encoder.conv1(features)))).transpose(1, 2)\n"
            "    states = states + encoder.embed_positions.weight[: states.shape[1]]\n"
            "    for layer in encoder.layers:\n        states = layer(states, None)\n"
            "    logits = model.classifier(model.projector(encoder.layer_norm(states)).mean(1))\n"
            "label = model.config.id2label[logits.argmax(-1).item()]\n```"
        )

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        self.hf.save(model, folder, weights)
        self.calibration.write(folder)

    # ---- tensors ----------------------------------------------------------------------------

    @property
    def rate(self) -> int:
        return int(self.extractor.sampling_rate)

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> AudioClips:
        """Clips decoded on access, at the model's rate (no augmentation, so `train` is unused)."""
        ids = {n: i for i, n in enumerate(self.label_names)}
        labels = [ids[label] for label in rows.labels] if labelled else None
        return AudioClips(rows.inputs[self.audio_key], labels, self.rate)

    def lengths(self, dataset: AudioClips) -> list[int]:
        """Clip lengths in 10 ms frames, from the file headers, so a batch holds clips of similar length."""
        return [round(audio_seconds(p) * 100) for p in dataset.paths]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Model inputs for a batch: Whisper's log-mel frames (B, mels, T) with each clip's frame count
        (B,) under `crop`, or (B, mels, 3000) under `pad`; other encoders' padded waveforms; (B,) labels."""
        clips = [f["audio"] for f in features]
        if not self.whisper:
            inputs = self.extractor(clips, sampling_rate=self.rate, padding="longest", return_tensors="pt")
            batch = {k: v for k, v in inputs.items() if k in ("input_values", "attention_mask")}
        else:
            batch = whisper_features(self.extractor, clips, self.rate, self.options.whisper_input)
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    # ---- loss, metrics, predictions ---------------------------------------------------------

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "frames" not in batch:  # the model's own forward: Whisper padded to 30 s, or a waveform encoder
            return model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # (B, num_labels)
        features = batch["input_features"]
        if model.training:
            features = spec_augmented(features, batch["frames"], self.options.spec_augment)
        states, keep = whisper_states(model.encoder, features, batch["frames"])  # type: ignore[arg-type]  # torch types Module.__getattr__ as Tensor | Module
        projected = model.projector(states)  # type: ignore[operator]  # (B, T, P)
        return model.classifier(masked_mean(projected, keep))  # type: ignore[operator]  # (B, num_labels)

    def pooled_features(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, H) the encoder's last states averaged over each clip's own frames (all frames for
        models run by their own forward): what the pre-trained encoder knows, before any head."""
        if "frames" in batch:
            states, keep = whisper_states(model.encoder, batch["input_features"], batch["frames"])  # type: ignore[arg-type]  # torch types Module.__getattr__ as Tensor | Module
            return masked_mean(states, keep)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return model(**inputs, output_hidden_states=True).hidden_states[-1].mean(1)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.forward(model, batch)
        loss = F.cross_entropy(logits.float(), batch["labels"], weight=self.class_weights(self.config, self.train_rows, self.label_names, logits.device),
                               label_smoothing=self.config.training.label_smoothing_factor)
        return loss, logits

    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]:
        """Accuracy, macro F1, per-class table and confusion matrix, ROC AUC, and calibration before and
        after temperature scaling (tasks/_calibration.py)."""
        logits = stacked(outputs, len(self.label_names))
        return self.calibration.scores(logits, label_ids(rows, self.label_names), self.label_names,
                                       fit=rows is self.eval_rows and self.train_rows is not None)

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        """One record per clip: its path, the predicted label and the probability of each label."""
        return [{self.audio_key: path, **record}
                for path, record in zip(rows.inputs[self.audio_key], label_probabilities(outputs, self.label_names, self.calibration.temperature))]

