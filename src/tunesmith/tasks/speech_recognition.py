"""Speech recognition (new speakers, accents, vocabularies): Whisper or wav2vec2-style CTC on transcribed clips.

Rows are audio clips with a transcript: a CSV/JSONL with a path column and a text column
(`speech_recognition.audio_column`, `text_column`; any other column, such as a speaker, is kept
for `tunesmith evaluate --by speaker`), a folder with a transcripts file (LibriSpeech, Kaldi or
Sphinx style: `tunesmith.data.transcripts`), or class folders whose names are the transcripts. Every
clip is opened in the preflight, before any weights load (`tunesmith.data.audio`). The model is the
source's `AutoModelForSpeechSeq2Seq` (Whisper), or `AutoModelForCTC` for wav2vec2-style encoders
(tasks/_ctc.py). Whisper's encoder runs over the batch's longest clip, not 30 s, with the padding
masked out of its attention and of the decoder's cross-attention (`whisper_input: crop`,
tasks/_audio.py), so a clip is transcribed as it would be alone. A Whisper that has never trained on
cropped clips repeats itself on them ("yes yes yes yes", no end of text), so until its first training
step on them (marked in its config, and so in `best/`) it is scored on clips padded to 30 s, exactly
as transformers pads them: the baseline is the pre-trained model as it is meant to run.

The decoder is taught forcing its own prompt (`<|startoftranscript|>`, the language and task of a
multilingual model, `<|notimestamps|>`) and then the transcript, with a leading space as Whisper writes
text, and `<|endoftext|>`; the loss covers the transcript and the end token, not the prompt.
Evaluation generates every validation transcript (greedy, or `num_beams`) and scores the word and
character error rates (jiwer) on lower-cased text without punctuation (`normalize`), plus the loss
per target token. A model that has learned to stop at once, the known failure of a too-high learning
rate, writes empty transcripts and a WER stuck near 1.0: evaluation counts them (`empty_predictions`)
and says so in the log. A source that is not a Whisper (wav2vec2, HuBERT, WavLM) trains with CTC: tasks/_ctc.py.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tunesmith.config import RunConfig, Section
from tunesmith.data.audio import AudioClips, audio_seconds, read_audio_rows
from tunesmith.data.file_rows import split_folders
from tunesmith.data.labelled import LabelledRows, read_splits
from tunesmith.errors import ConfigError
from tunesmith.models.demos import check_task
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.models.sources import ResolvedSource
from tunesmith.tasks import OneOutputPerRow, register_task
from tunesmith.tasks._audio import (
    AudioModel,
    AudioSettings,
    blocked,
    checked_clips,
    padded_features,
    spec_augmented,
    whisper_features,
    whisper_states,
)
from tunesmith.tasks._ctc import CTCPath
from tunesmith.tasks._generation import cut_at_stop, generated_rows, stop_ids, token_loss

if TYPE_CHECKING:
    from tunesmith.models.hf_family import HFModel

log = logging.getLogger("tunesmith")
IGNORE = -100  # label of the prompt and of padding
CROPPED = "tunesmith_whisper_input"  # model config key: "crop" once the model has trained on cropped clips


class SpeechRecognitionConfig(AudioSettings):
    text_column: str = "text"
    """Column holding each clip's transcript in a CSV/JSONL file (class folders: the folder name)."""
    language: str | None = None
    """Multilingual Whisper: the language spoken (`en`, `de`, ...), forced in the prompt; English-only
    models (`.en`) take none."""
    max_target_length: int = Field(128, gt=0)
    """Longest transcript in tokens; longer ones are cut for training (and counted)."""
    max_new_tokens: int = Field(64, gt=0)
    """Longest generated transcript, in tokens, for evaluation and `tunesmith predict`."""
    num_beams: int = Field(1, gt=0)
    """Beam search width for generation (1 = greedy)."""
    normalize: bool = True
    """Score WER and CER on lower-cased text with punctuation removed and spaces collapsed (both the
    transcripts and the predictions); false scores the text exactly as written."""


def processor(resolved: ResolvedSource, kwargs: dict[str, Any]) -> Any:
    """The source's processor (feature extractor + tokenizer), saved beside the model in `best/`."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(resolved.location, **kwargs)


def normalized(text: str) -> str:
    """Lower case, punctuation removed (apostrophes inside words kept), whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s']|(?<!\w)'|'(?!\w)", " ", text.lower()).split())


@register_task("speech-recognition")
class SpeechRecognitionTask(OneOutputPerRow):
    name: ClassVar[str]  # set by @register_task
    # `empty_predictions` (the share of empty transcripts) is listed so every log line, the report and
    # the model card show it beside WER: the guard against the model that learned to stop at once.
    metric_names: ClassVar[tuple[str, ...]] = ("wer", "cer", "empty_predictions", "loss", "perplexity")
    minimize = ("wer", "cer", "empty_predictions", "loss", "perplexity")
    settings: ClassVar[type[Section] | None] = SpeechRecognitionConfig
    supports_activation_cache: ClassVar[bool] = False  # the decoder reads the encoder through generation
    pipeline_tag = "automatic-speech-recognition"  # the Hub's name for the task

    @property
    def options(self) -> SpeechRecognitionConfig:
        """This task's section, `config.speech_recognition`, typed (the assembled schema adds that field)."""
        return self.config.task_settings

    def __init__(self, config: RunConfig):
        check_task(config.model.source, self.name)
        self.config = config
        self.audio_key = self.options.audio_column
        self.source = AudioModel("AutoModelForSpeechSeq2Seq", config.model, processor)
        self.train_rows: LabelledRows | None = None
        self.eval_rows: LabelledRows | None = None
        self.label_names: list[str] = []  # transcripts are free text, not classes
        self.processor: Any = None  # read with the model
        self.prompt: list[int] = []  # the decoder's forced start: <|startoftranscript|> ... <|notimestamps|>
        self.bad_clips: dict[str, list[dict[str, Any]]] = {}
        self.truncated = 0  # transcripts cut to max_target_length
        self.data_checks: dict[str, int] = {}
        self.ctc = CTCPath(self.source, config, normalized)  # active for a source that is not a Whisper

    @property
    def hf(self) -> HFModel:
        return self.ctc.hf if self.ctc.active else self.source.hf

    # ---- data -------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Reads the rows, splits them, and opens every clip that will be used."""
        if self.ctc.active:
            self.ctc.check()
        d = self.config.data
        pair = split_folders(Path(d.train)) if d.train and d.validation is None and Path(d.train).is_dir() else None
        if pair:
            d = d.model_copy(update={"train": str(pair[0]), "validation": str(pair[1])})
        train, val, self.data_checks = read_splits(d, self.config.training.seed, self._read)
        self.train_rows = self._checked("train", train) if train is not None else None
        self.eval_rows = self._checked("validation", val)

    def _read(self, path: str, labelled: bool = True) -> LabelledRows:
        o = self.options
        return read_audio_rows("speech_recognition", path, self.audio_key, o.text_column, o.audio_root, self.config.data.bad_rows,
                               labelled, "speech_recognition.text_column", transcripts=True)

    def _checked(self, split: str, rows: LabelledRows) -> LabelledRows:
        kept, self.bad_clips[split] = checked_clips("speech_recognition", rows, self.audio_key, self.config.data.bad_rows,
                                                    self.options, self.source.whisper)
        return kept

    def unlabelled_rows(self, path: str) -> LabelledRows:
        """Clips to transcribe: a folder (searched recursively) or a CSV/JSONL with `audio_column`."""
        return self._checked("predict", self._read(path, labelled=False))

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"truncated_transcripts": self.truncated, "unusable_clips": self.bad_clips}
        for split, rows in (("train", self.train_rows), ("validation", self.eval_rows)):
            if rows is not None:
                seconds = [audio_seconds(p) for p in rows.inputs[self.audio_key]]
                facts[split] = {"source": rows.source, "rows": len(rows), "skipped": rows.skipped,
                                "seconds": {"mean": round(float(np.mean(seconds)), 3), "max": round(max(seconds), 3)},
                                "mean_words": round(float(np.mean([len(t.split()) for t in rows.labels])), 2)}
        facts.update(self.data_checks, **self.ctc.facts(self.eval_rows))
        return facts

    # ---- model ------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        """The source's Whisper; under `model.pretrained: false` the same architecture from random
        initialization, with the source's processor and generation settings."""
        if self.ctc.active:
            return self._ready(self.ctc.build(self.train_rows))
        model = self.hf.build(new_head=False)
        if not self.config.model.pretrained:
            from transformers import GenerationConfig

            model.generation_config = GenerationConfig.from_pretrained(self.hf.resolved.location, **self.hf.kwargs)
            setattr(model.config, CROPPED, "crop")  # random weights have no 30 s habit to respect
        elif self.options.whisper_input == "crop" and not trained_cropped(model):
            log.info("%s: scored on clips padded to 30 s until it has trained on cropped ones (untrained on them, "
                     "Whisper repeats itself); training and later evaluations crop", self.config.model.source)
        return self._ready(model)

    def load_trained(self) -> nn.Module:
        return self._ready(self.hf.load_trained())

    def _ready(self, model: nn.Module) -> nn.Module:
        """Reads the processor and the decoder's prompt for this model."""
        self.processor = self.hf.tokenizer
        if self.ctc.active:
            return self.ctc.ready(model)
        tokenizer, language = self.processor.tokenizer, self.options.language
        if getattr(model.generation_config, "is_multilingual", False) and language is None:
            raise ConfigError(["speech_recognition.language: this Whisper is multilingual; name the language spoken "
                               "(en, de, fr, ...)"])
        tokenizer.set_prefix_tokens(language=language, task="transcribe" if language else None, predict_timestamps=False)
        self.prompt = list(tokenizer.prefix_tokens)
        return model

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        return self.hf.layer_groups(model)

    def card_usage(self) -> str:
        if self.ctc.active:
            return self.ctc.card_usage()
        load = ("```python\nimport numpy, torch\nfrom transformers import AutoModelForSpeechSeq2Seq, AutoProcessor\n"
                'model = AutoModelForSpeechSeq2Seq.from_pretrained("path/to/best").eval()\n'
                'processor = AutoProcessor.from_pretrained("path/to/best")\n')
        if self.options.whisper_input == "pad":
            return (load + 'features = processor(samples_16khz_mono, sampling_rate=16000, return_tensors="pt").input_features\n'
                    "with torch.no_grad():\n    ids = model.generate(input_features=features, max_new_tokens=64)\n"
                    "text = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()\n```")
        return (
            "Trained on clips at their own length (`speech_recognition.whisper_input: crop`), not padded to 30 s "
            "as transformers' own forward and `pipeline` pad them, so run the encoder over the clip's frames:\n\n"
            + load + "from transformers.modeling_outputs import BaseModelOutput\n"
            "clip = numpy.pad(samples_16khz_mono, (0, 400))  # and 25 ms of silence after it, as in training\n"
            'features = processor(clip, sampling_rate=16000, padding="longest", return_tensors="pt").input_features\n'
            "encoder, gelu = model.get_encoder(), torch.nn.functional.gelu\n"
            "with torch.no_grad():\n"
            "    states = gelu(encoder.conv2(gelu(encoder.conv1(features)))).transpose(1, 2)\n"
            "    states = states + encoder.embed_positions.weight[: states.shape[1]]\n"
            "    for layer in encoder.layers:\n        states = layer(states, None)\n"
            "    encoded = BaseModelOutput(last_hidden_state=encoder.layer_norm(states))\n"
            "    ids = model.generate(encoder_outputs=encoded, max_new_tokens=64)\n"
            "text = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()\n```"
        )

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        self.hf.save(model, folder, weights)

    # ---- tensors ----------------------------------------------------------------------------

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> AudioClips:
        """Clips decoded on access at 16 kHz, with their transcripts' token ids (no augmentation)."""
        targets = None
        if labelled and self.ctc.active:
            targets = self.ctc.targets(rows)
        elif labelled:
            limit = self.options.max_target_length - 1  # room for <|endoftext|>
            # A leading space, as Whisper writes text after its prompt (" Yes." is one token, "Yes." two).
            ids = self.processor.tokenizer([" " + t.strip() for t in rows.labels], add_special_tokens=False).input_ids
            cut = sum(len(i) > limit for i in ids)
            if cut:
                log.info("%s: %d of %d transcripts longer than %d tokens were cut", rows.source, cut, len(rows), limit)
            self.truncated += cut
            targets = [i[:limit] for i in ids]
        return AudioClips(rows.inputs[self.audio_key], targets, self.processor.feature_extractor.sampling_rate)

    def lengths(self, dataset: AudioClips) -> list[int]:
        """Clip lengths in 10 ms frames, from the file headers, so a batch holds clips of similar length."""
        return [round(audio_seconds(p) * 100) for p in dataset.paths]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Log-mel inputs (tasks/_audio.py `whisper_features`), and for labelled clips the decoder's
        inputs, prompt + transcript (B, T), and labels, transcript + end, -100 under the prompt and padding."""
        if self.ctc.active:
            return self.ctc.collate(features)
        extractor = self.processor.feature_extractor
        batch = whisper_features(extractor, [f["audio"] for f in features], extractor.sampling_rate,
                                 self.options.whisper_input)
        if "labels" not in features[0]:
            return batch
        end, pad = self.processor.tokenizer.eos_token_id, self.processor.tokenizer.pad_token_id
        rows = [(self.prompt + f["labels"], [IGNORE] * (len(self.prompt) - 1) + f["labels"] + [end]) for f in features]
        longest = max(len(inputs) for inputs, _ in rows)
        batch["decoder_input_ids"] = torch.full((len(rows), longest), pad if pad is not None else end, dtype=torch.long)
        batch["labels"] = torch.full((len(rows), longest), IGNORE, dtype=torch.long)
        for i, (inputs, labels) in enumerate(rows):
            batch["decoder_input_ids"][i, : len(inputs)] = torch.tensor(inputs)
            batch["labels"][i, : len(labels)] = torch.tensor(labels)
        return batch

    # ---- loss, metrics, predictions ---------------------------------------------------------

    def _encoded(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[dict[str, Any], torch.Tensor | None]:
        """What the decoder reads (`encoder_outputs` or `input_features`), and each clip's own
        encoder positions (B, S) when cropped."""
        if "frames" not in batch:
            return {"input_features": batch["input_features"]}, None
        if not trained_cropped(model):  # see the module docstring: scored as transformers pads it
            extractor = self.processor.feature_extractor
            return {"input_features": padded_features(batch["input_features"], batch["frames"], extractor)}, None
        from transformers.modeling_outputs import BaseModelOutput

        states, keep = whisper_states(model.get_encoder(), batch["input_features"], batch["frames"])  # type: ignore[operator]  # torch types Module.__getattr__ as Tensor | Module
        return {"encoder_outputs": BaseModelOutput(last_hidden_state=states)}, keep

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The generated transcripts of an unlabelled batch (see tasks/_generation.py)."""
        if self.ctc.active:
            return self.ctc.forward(model, batch)
        return {"generated": self._generate(model, batch)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean cross-entropy over transcript tokens; in evaluation also per-row loss sums and token
        counts, and the generated transcripts (tasks/_generation.py)."""
        if self.ctc.active:
            return self.ctc.loss(model, batch)
        if model.training and "frames" in batch:
            setattr(getattr(model, "module", model).config, CROPPED, "crop")
            batch = {**batch, "input_features": spec_augmented(batch["input_features"], batch["frames"],
                                                               self.options.spec_augment)}
        encoded, keep = self._encoded(model, batch)
        with cross_attention_mask(model, keep):
            logits = model(**encoded, decoder_input_ids=batch["decoder_input_ids"]).logits.float()  # (B, T, V)
        labels = batch["labels"]  # (B, T)
        smoothing = self.config.training.label_smoothing_factor if model.training else 0.0
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, label_smoothing=smoothing)
        if model.training:
            return loss, {}
        per_token = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")  # (B, T)
        outputs = {"loss_sums": per_token.sum(1), "tokens": (labels != IGNORE).sum(1),
                   "generated": self._generate(model, batch)}
        return loss, outputs

    @torch.no_grad()
    def _generate(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Generated ids, (B, T), -1 from the end on."""
        model = getattr(model, "module", model)
        o = self.options
        encoded, keep = self._encoded(model, batch)
        language = {"language": o.language, "task": "transcribe"} if o.language else {}
        with cross_attention_mask(model, keep):
            out = model.generate(**encoded, max_new_tokens=o.max_new_tokens, num_beams=o.num_beams, do_sample=False,  # type: ignore[operator]  # torch types Module.__getattr__ as Tensor | Module
                                 **language)
        return cut_at_stop(out, stop_ids(model, self.processor.tokenizer))

    def batch_outputs(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> list[Any]:
        if self.ctc.active:
            return self.ctc.batch_outputs(outputs)
        return generated_rows(outputs, self.processor.tokenizer)

    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]:
        """Word and character error rates of the generated transcripts, the share of empty ones, and the
        loss per transcript token."""
        import jiwer

        scores: dict[str, Any] = token_loss(outputs)
        clean = normalized if self.options.normalize else str.strip
        predictions = [clean(o.text or "") for o in outputs]
        references = [clean(t) for t in rows.labels]
        if not references:
            return scores
        empty = sum(not p for p in predictions)
        scores.update({"wer": float(jiwer.wer(references, predictions)), "cer": float(jiwer.cer(references, predictions)),
                       "empty_predictions": empty / len(predictions)})
        if empty:
            log.warning("%d of %d transcripts generated are empty%s: a model that learned to stop at once (WER "
                        "near 1.0) needs a lower learning rate or more steps of warm-up; check the transcripts too",
                        empty, len(predictions), " (all of them)" if empty == len(predictions) else "")
        return scores

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        """Per clip: its path, the generated transcript and (when scored) its loss per token."""
        records = []
        for path, out in zip(rows.inputs[self.audio_key], outputs):
            record: dict[str, Any] = {self.audio_key: path, "predicted_text": out.text}
            if out.tokens > 0:
                record["loss"] = round(out.loss_sum / out.tokens, 6)
            records.append(record)
        return records


def trained_cropped(model: nn.Module) -> bool:
    """Whether the model has trained on cropped clips (its config says so; a DDP wrapper is looked through)."""
    return getattr(getattr(model, "module", model).config, CROPPED, None) == "crop"


@contextlib.contextmanager
def cross_attention_mask(model: nn.Module, keep: torch.Tensor | None) -> Iterator[None]:
    """Masks the encoder positions past each clip's end out of the decoder's cross-attention, which
    transformers' Whisper decoder always runs unmasked (`keep`: (B, S) the clip's own positions;
    None does nothing). Beam search repeats each row: the mask is repeated to match."""
    if keep is None:
        yield
        return
    mask = blocked(keep, torch.float32)[:, :, None, :]  # (B, 1, 1, S)

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        queries = kwargs.get("hidden_states", args[0] if args else None)
        assert queries is not None  # WhisperDecoderLayer passes hidden_states to encoder_attn
        kwargs["attention_mask"] = mask.repeat_interleave(queries.shape[0] // mask.shape[0], 0).to(queries.dtype)
        return args, kwargs

    layers = model.get_decoder().layers  # type: ignore[operator]  # torch types Module.__getattr__ as Tensor | Module
    handles = [layer.encoder_attn.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
