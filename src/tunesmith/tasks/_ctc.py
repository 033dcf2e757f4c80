"""speech-recognition's CTC half: encoder-only speech models (wav2vec2, HuBERT, WavLM, data2vec-audio).

A source that is not a Whisper but that transformers' `AutoModelForCTC` maps (its config's
`model_type`) is fine-tuned with CTC: a linear `lm_head` over the encoder's frames (one every 20 ms
for wav2vec2) scores a character per frame, with `[PAD]` (id 0) as the CTC blank. A pre-trained
encoder without a CTC head and tokenizer (`facebook/wav2vec2-base`) gets a character vocabulary built
from the training transcripts, as transformers' CTC examples build it: `[PAD]`, `[UNK]`, `|` (the
word delimiter, for spaces), then every character the transcripts use, lower-cased and without
punctuation under `speech_recognition.normalize`; its `Wav2Vec2CTCTokenizer` and the source's feature
extractor are saved in `best/` as a `Wav2Vec2Processor`. A source that has both (a fine-tuned
`wav2vec2-base-960h`) keeps its vocabulary and head, transcripts cased to fit it. Validation
characters outside the vocabulary become `[UNK]` and are counted (`describe`).

The loss is transformers' (`ctc_loss_reduction: mean`: each clip's negative log-likelihood over
its transcript length, averaged), computed here from each clip's own frame count, with
`ctc_zero_infinity` so a clip too short for its transcript (counted) adds nothing instead of inf.
Decoding is greedy (the best label per frame, repeats collapsed, blanks dropped), as the
processor's `batch_decode` does it. As with `freeze_feature_encoder` in transformers' examples, the
convolutional feature encoder (the `stem` layer group) is frozen unless `strategy.freeze` is set.
The model's own SpecAugment (`mask_time_prob` in its config, 0.05 for wav2vec2) masks frames in
training as the config has it, or as `speech_recognition.spec_augment` sets it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.config import RunConfig
from tunesmith.data.audio import audio_seconds
from tunesmith.data.labelled import LabelledRows
from tunesmith.errors import ConfigError
from tunesmith.models.hf_family import HFModel
from tunesmith.models.sources import ResolvedSource
from tunesmith.tasks._audio import AudioModel, set_model_spec_augment
from tunesmith.tasks._generation import Generated

log = logging.getLogger("tunesmith")
BLANK, UNKNOWN, DELIMITER = "[PAD]", "[UNK]", "|"  # the names transformers' CTC tokenizer and examples use
IGNORE = -100  # label padding


class CTCPath:
    """The CTC model, vocabulary, batches, loss and decoding for speech-recognition on a non-Whisper source."""

    def __init__(self, source: AudioModel, config: RunConfig, normalized: Callable[[str], str]):
        self.source, self.config, self.normalized = source, config, normalized
        self._hf: HFModel | None = None
        self.processor: Any = None  # Wav2Vec2Processor: the source's feature extractor + the CTC tokenizer
        self.too_short = 0  # clips with fewer frames than their transcript needs
        self.frame_counts: Any = None  # the model's frame count of clips of given sample counts, set by `ready`

    @property
    def active(self) -> bool:
        """Whether the run fine-tunes with CTC: its source is not a Whisper."""
        return not self.source.whisper

    @property
    def hf(self) -> HFModel:
        if self._hf is None:
            self._hf = HFModel("AutoModelForCTC", self.config.model, self._read_processor)
        return self._hf

    def check(self) -> None:
        """Refuses a source CTC cannot fine-tune and the Whisper-only settings; freezes the feature
        encoder by default (`strategy.freeze: 1`, the stem group) when the source is pre-trained.

        Raises:
            ConfigError: the source is no CTC encoder of the waveform, or `language` / `num_beams` are set.
        """
        from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING_NAMES

        kind = getattr(self.hf.model_config(), "model_type", None)
        if kind not in MODEL_FOR_CTC_MAPPING_NAMES:
            raise ConfigError([f"model.source: {self.config.model.source} ({kind}) is neither a Whisper (fine-tuned as "
                               "seq2seq) nor a speech encoder that transformers' AutoModelForCTC takes (wav2vec2, "
                               "HuBERT, WavLM, data2vec-audio, ...)"])
        found = self.hf.load_tokenizer()
        if "input_values" not in getattr(found, "feature_extractor", found).model_input_names:
            raise ConfigError([f"model.source: {self.config.model.source} ({kind}) reads log-mel features; CTC here "
                               "fine-tunes encoders of the waveform (wav2vec2, HuBERT, WavLM, data2vec-audio, ...)"])
        o = self.config.task_settings
        errors = [f"speech_recognition.{key}: only Whisper uses it; {self.config.model.source} is fine-tuned with CTC, "
                  f"decoded greedily, with no language prompt: remove it" for key, off in
                  (("language", o.language is None), ("num_beams", o.num_beams == 1)) if not off]
        if errors:
            raise ConfigError(errors)
        strategy = self.config.strategy
        if self.config.model.pretrained and "freeze" not in strategy.model_fields_set:
            strategy.freeze = 1  # a default, as the task defaults are (config/_run.py): still counted as unset
            strategy.model_fields_set.discard("freeze")
            log.info("CTC: the convolutional feature encoder (layer group `stem`) stays frozen, as transformers' "
                     "freeze_feature_encoder; strategy.freeze: none trains it too")

    # ---- model ------------------------------------------------------------------------------

    def build(self, train_rows: LabelledRows | None) -> nn.Module:
        """`AutoModelForCTC` from the source: its own head and vocabulary when it has both, else a new
        `lm_head` sized to a vocabulary of the training transcripts' characters (the task then calls `ready`).

        Raises:
            ConfigError: the source has no vocabulary of its own and there are no training transcripts.
        """
        self.processor = None  # the source's own, read afresh
        found = self.hf.load_tokenizer()
        keep = any(a.endswith("ForCTC") for a in getattr(self.hf.model_config(), "architectures", None) or [])
        if keep and getattr(found, "tokenizer", None) is not None:
            self.processor = found
            head: dict[str, Any] = {}
        else:
            if train_rows is None:
                raise ConfigError([f"model.source: {self.config.model.source} has no CTC vocabulary of its own; set "
                                   "data.train, whose transcripts make one"])
            self.processor = new_processor(getattr(found, "feature_extractor", found),
                                           self.cleaned(train_rows.labels))
            tokenizer = self.processor.tokenizer
            head = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
        model = self.hf.build({**head, "ctc_loss_reduction": "mean", "ctc_zero_infinity": True}, new_head=bool(head))
        set_model_spec_augment(model, self.config.task_settings.spec_augment)
        if self.config.strategy.freeze not in ("none", 0) and hasattr(model, "freeze_feature_encoder"):
            model.freeze_feature_encoder()  # type: ignore[operator]  # also stops autograd from reaching back into the waveform
        return model

    def ready(self, model: nn.Module) -> nn.Module:
        """The model with its processor (for a fine-tuned one, the one saved beside it) and frame counts
        (B,) of clips of (B,) samples, from its convolutions' sizes."""
        self.processor = self.hf.tokenizer
        self.frame_counts = model._get_feat_extract_output_lengths
        return model

    def _read_processor(self, resolved: ResolvedSource, kwargs: dict[str, Any]) -> Any:
        """The processor made for this run, else the source's: a processor, or its feature extractor
        alone where it has no tokenizer (transformers then fails on the missing vocabulary file)."""
        from transformers import AutoFeatureExtractor, AutoProcessor

        if self.processor is not None:
            return self.processor
        try:
            return AutoProcessor.from_pretrained(resolved.location, **kwargs)
        except (OSError, TypeError, ValueError):
            return AutoFeatureExtractor.from_pretrained(resolved.location, **kwargs)

    def card_usage(self) -> str:
        return ("Greedy CTC decoding, as evaluation and `tunesmith predict` decode:\n\n"
                "```python\nimport torch\nfrom transformers import AutoModelForCTC, AutoProcessor\n"
                'model = AutoModelForCTC.from_pretrained("path/to/best").eval()\n'
                'processor = AutoProcessor.from_pretrained("path/to/best")\n'
                'inputs = processor(samples_16khz_mono, sampling_rate=16000, return_tensors="pt")\n'
                "with torch.no_grad():\n    ids = model(**inputs).logits.argmax(-1)  # (1, frames): the best label per frame\n"
                "text = processor.batch_decode(ids)[0]  # repeats collapsed, blanks dropped, | as spaces\n```")

    # ---- data -------------------------------------------------------------------------------

    def cleaned(self, texts: list[str]) -> list[str]:
        """Transcripts as the vocabulary spells them: normalized under `normalize`, cased to a kept vocabulary."""
        vocab = self.processor.tokenizer.get_vocab() if self.processor is not None else {}
        letters = [c for c in vocab if len(c) == 1]
        upper = any(c.isupper() for c in letters) and not any(c.islower() for c in letters)  # LibriSpeech models
        clean = self.normalized if self.config.task_settings.normalize else lambda t: " ".join(t.split())
        return [clean(t).upper() if upper else clean(t) for t in texts]

    def targets(self, rows: LabelledRows) -> list[list[int]]:
        """Each transcript's character ids (spaces as `|`, unknown characters as `[UNK]`); counts the
        clips with fewer frames than CTC needs for their transcript."""
        ids = self.processor.tokenizer(self.cleaned(rows.labels)).input_ids
        rate = self.processor.feature_extractor.sampling_rate
        samples = torch.tensor([round(audio_seconds(p) * rate) for p in rows.inputs[self.config.task_settings.audio_column]])
        frames = self.frame_counts(samples).tolist()
        # CTC needs a frame per label and a blank between repeated ones.
        short = sum(len(i) + sum(a == b for a, b in zip(i, i[1:])) > f for i, f in zip(ids, frames))
        if short:
            log.warning("%s: %d of %d clips have fewer frames than their transcript needs; they add nothing to the "
                        "CTC loss", rows.source, short, len(rows))
        self.too_short += short
        return ids

    def facts(self, eval_rows: LabelledRows | None) -> dict[str, Any]:
        """The vocabulary's size, the validation characters it lacks (scored as `[UNK]`), and short clips."""
        if not self.active or self.processor is None:
            return {}
        vocab = self.processor.tokenizer.get_vocab()
        texts = self.cleaned(eval_rows.labels) if eval_rows is not None else []
        unknown = Counter(c for t in texts for c in t if c != " " and c not in vocab)
        return {"ctc": {"vocabulary_size": len(vocab), "unknown_characters": dict(unknown.most_common()),
                        "clips_too_short_for_transcript": self.too_short}}

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The feature extractor's padded waveforms (B, S) (and attention mask where the model takes
        one), each clip's sample count (B,), and for labelled clips the character ids (B, L), -100 after the end."""
        clips = [f["audio"] for f in features]
        extractor = self.processor.feature_extractor
        inputs = extractor(clips, sampling_rate=extractor.sampling_rate, padding="longest", return_tensors="pt")
        batch = {k: v for k, v in inputs.items() if k in ("input_values", "attention_mask")}
        batch["samples"] = torch.tensor([len(c) for c in clips], dtype=torch.long)
        if "labels" in features[0]:
            labels = [f["labels"] for f in features]
            batch["labels"] = torch.full((len(labels), max(map(len, labels), default=0)), IGNORE, dtype=torch.long)
            for i, row in enumerate(labels):
                batch["labels"][i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return batch

    # ---- loss and decoding ------------------------------------------------------------------

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`logits` (B, T, V) and each clip's own frame count, `frames` (B,)."""
        inputs = {k: v for k, v in batch.items() if k in ("input_values", "attention_mask")}
        logits = model(**inputs).logits.float()
        frames = self.frame_counts(batch["samples"])
        return {"logits": logits, "frames": frames.clamp(max=logits.shape[1])}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """transformers' CTC loss under `ctc_loss_reduction: mean`; in evaluation also each clip's loss
        sum and transcript length (for the loss per character) and its best labels."""
        out = self.forward(model, batch)
        labels = batch["labels"]
        real = labels >= 0
        log_probs = F.log_softmax(out["logits"], dim=-1).transpose(0, 1)  # (T, B, V)
        with torch.backends.cudnn.flags(enabled=False):  # as transformers: cuDNN's CTC takes fewer shapes
            per_row = F.ctc_loss(log_probs, labels[real], out["frames"], real.sum(1), reduction="none",
                                 blank=self.processor.tokenizer.pad_token_id, zero_infinity=True)  # (B,)
        loss = (per_row / real.sum(1).clamp(min=1)).mean()
        if model.training:
            return loss, {}
        return loss, {"loss_sums": per_row, "tokens": real.sum(1), **out}

    def batch_outputs(self, outputs: dict[str, torch.Tensor]) -> list[Generated]:
        """One `Generated` per clip: its CTC loss sum and transcript length (0 unlabelled), and its text."""
        best = outputs["logits"].argmax(-1).tolist()  # (B, T)
        frames = outputs["frames"].tolist()
        sums = outputs["loss_sums"].tolist() if "loss_sums" in outputs else [0.0] * len(best)
        counts = outputs["tokens"].tolist() if "tokens" in outputs else [0] * len(best)
        tokenizer = self.processor.tokenizer
        return [Generated(float(s), int(n), tokenizer.decode(greedy(row[:f], tokenizer.pad_token_id), group_tokens=False))
                for row, f, s, n in zip(best, frames, sums, counts)]


def greedy(labels: list[int], blank: int) -> list[int]:
    """CTC's best path as labels: repeats collapsed, then blanks dropped (a blank between two equal
    labels keeps both: "l", blank, "l" is "ll")."""
    return [t for i, t in enumerate(labels) if t != blank and (i == 0 or t != labels[i - 1])]


def new_processor(extractor: Any, transcripts: list[str]) -> Any:
    """A `Wav2Vec2Processor` of `extractor` and a CTC tokenizer of the transcripts' characters:
    `[PAD]` (0, the blank), `[UNK]`, `|` (spaces), then the characters in sorted order."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2Processor

    characters = sorted({c for t in transcripts for c in t} - {" ", DELIMITER})
    vocab = {BLANK: 0, UNKNOWN: 1, DELIMITER: 2, **{c: i + 3 for i, c in enumerate(characters)}}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vocab.json"
        path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        # No <s>/</s>: CTC has no sequence start or end, and they would grow the vocabulary past the head.
        tokenizer = Wav2Vec2CTCTokenizer(str(path), unk_token=UNKNOWN, pad_token=BLANK, word_delimiter_token=DELIMITER,
                                         bos_token=None, eos_token=None)
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)

