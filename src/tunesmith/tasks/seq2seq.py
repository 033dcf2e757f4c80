"""Sequence-to-sequence (translation, summarization, question generation) on an encoder-decoder model.

Rows are source/target text pairs from CSV, TSV, JSONL or Parquet (`seq2seq.source_column`,
`seq2seq.target_column`), read with the same checks as labelled text. The model is
`AutoModelForSeq2SeqLM` (T5, BART, Marian, ...). A source that is an encoder only (BERT-like, as
`demo:minilm`) is warm-started as an encoder-decoder (Rothe et al., 2020, "BERT2BERT"): the
encoder and the decoder both start from its weights, the decoder's cross-attention is new, and
`best/` is a transformers `EncoderDecoderModel`.

Targets carry the loss (teacher forcing, padding -100); sources longer than `data.max_length` and
targets longer than `seq2seq.max_target_length` are cut and counted. Evaluation scores the mean
loss per target token and its perplexity and (`seq2seq.generate_on_eval`) generates an output for
every validation row (greedy, or beam search with `seq2seq.num_beams`) scored with BLEU and ROUGE
(`report/text_metrics.py`). Outputs per row are one float vector: [sum of token losses, target
tokens, then the generated ids, -1 after the end].
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tunesmith.config import RunConfig, Section
from tunesmith.data.labelled import LabelledRows, load_labelled, read_splits
from tunesmith.data.text_limits import cap_texts, char_limit
from tunesmith.errors import ConfigError
from tunesmith.models.hf_family import HFModel
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.models.sources import loading, token_limit
from tunesmith.report.text_metrics import generation_metrics
from tunesmith.tasks import OneOutputPerRow, register_task
from tunesmith.tasks._generation import cut_at_stop, generated_rows, padded, stop_ids, token_loss

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger("tunesmith")
IGNORE = -100  # label of padded target positions


# ---- config section `seq2seq` ----------------------------------------------------------

class Seq2SeqConfig(Section):
    source_column: str = "source"
    """Column (CSV/TSV/Parquet) or key (JSONL) of the input text; `data.max_length` caps its tokens."""
    target_column: str = "target"
    """Column or key of the output text the model learns to write."""
    source_prefix: str = ""
    """Text put before every source, as T5 expects (`"summarize: "`, `"translate English to German: "`)."""
    max_target_length: int = Field(128, gt=0)
    """Longest target in tokens; longer targets are cut for training (and counted)."""
    max_new_tokens: int = Field(64, gt=0)
    """Longest generated output, in tokens, for evaluation and `tunesmith predict`."""
    num_beams: int = Field(1, gt=0)
    """Beam search width for generation (1 = greedy)."""
    generate_on_eval: bool = True
    """At each evaluation also generate an output for every validation row and score `bleu` (sacrebleu)
    and `rouge1`, `rouge2`, `rougeL` against the targets; off scores loss and perplexity only."""


@register_task("seq2seq")
class Seq2SeqTask(OneOutputPerRow):
    name: ClassVar[str]  # set by @register_task
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "perplexity", "bleu", "rouge1", "rouge2", "rougeL")
    pipeline_tag = "text2text-generation"  # the Hub's name for the task
    settings: ClassVar[type[Section] | None] = Seq2SeqConfig
    supports_activation_cache: ClassVar[bool] = False  # the decoder reads every encoder layer's output through generation

    @property
    def options(self) -> Seq2SeqConfig:
        """This task's section, `config.seq2seq`, typed (the assembled schema adds that field)."""
        return self.config.task_settings

    def __init__(self, config: RunConfig):
        self.config = config
        self.hf = HFModel("AutoModelForSeq2SeqLM", config.model)
        self.resolved = self.hf.resolved
        self.train_rows: LabelledRows | None = None
        self.eval_rows: LabelledRows | None = None
        self.label_names: list[str] = []  # targets are free text, not classes
        self.tokenizer: Any = None  # read with the model (HFModel.tokenizer); transformers types it loosely
        self.decoder_start: int | None = None
        self.truncated = {"sources": 0, "targets": 0}
        self.data_checks: dict[str, int] = {}

    # ---- data -------------------------------------------------------------------------------

    def _read(self, path: str, labelled: bool = True) -> LabelledRows:
        s = self.options
        rows = load_labelled(path, [s.source_column], s.target_column if labelled else None, self.config.data.bad_rows,
                             settings=("seq2seq.source_column", "seq2seq.target_column"))
        return LabelledRows(rows.source, {"source": rows.inputs[s.source_column]}, rows.labels, rows.lines, rows.skipped)

    def preflight(self) -> None:
        """Reads and checks the source/target files before any weights load."""
        self.train_rows, self.eval_rows, self.data_checks = read_splits(
            self.config.data, self.config.training.seed, self._read)

    def unlabelled_rows(self, path: str) -> LabelledRows:
        return self._read(path, labelled=False)

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"truncated": dict(self.truncated)}
        for split, rows in (("train", self.train_rows), ("validation", self.eval_rows)):
            if rows is not None:
                facts[split] = {"source": rows.source, "rows": len(rows), "skipped": rows.skipped,
                                "mean_target_words": round(float(np.mean([len(t.split()) for t in rows.labels])), 1)}
        facts.update(self.data_checks)
        return facts

    # ---- model ------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        """The source's encoder-decoder, or an encoder warm-started as one; `model.pretrained: false`
        gives the same architecture from random initialization."""
        source_config = self.hf.model_config()
        model: PreTrainedModel
        if getattr(source_config, "is_encoder_decoder", False):
            model = self.hf.build(new_head=False)
        else:
            self.hf.load_tokenizer()
            with loading(self.resolved):
                model = self._warm_start(source_config, self.hf.dropout(), self.hf.kwargs)
        self.tokenizer = self.hf.tokenizer
        return self._configured(model)

    def _warm_start(self, source_config, extra: dict[str, Any], kwargs: dict[str, Any]) -> PreTrainedModel:
        """An EncoderDecoderModel whose encoder and decoder both start from an encoder-only source."""
        from transformers import AutoConfig, EncoderDecoderConfig, EncoderDecoderModel
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        decoder_only = getattr(source_config, "is_decoder", False) or any(
            a.endswith("ForCausalLM") for a in source_config.architectures or [])
        if decoder_only or source_config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:  # no decoder form
            raise ConfigError([f"model.source: {self.resolved.location} is a {source_config.model_type} model, neither "
                               "an encoder-decoder (T5, BART, Marian) nor an encoder that can be warm-started as one "
                               "(BERT-like); for a decoder-only language model use task: causal-lm"])
        location = self.resolved.location
        if not self.config.model.pretrained:
            encoder = AutoConfig.from_pretrained(location, **extra, **kwargs)
            return EncoderDecoderModel(EncoderDecoderConfig.from_encoder_decoder_configs(encoder, encoder))
        log.info("%s is an encoder: warm-starting an encoder-decoder from it (encoder and decoder from its weights, "
                 "new cross-attention)", location)
        side = {**extra, **kwargs}
        return EncoderDecoderModel.from_encoder_decoder_pretrained(
            location, location, encoder_add_pooling_layer=False, **{f"encoder_{k}": v for k, v in side.items()},
            **{f"decoder_{k}": v for k, v in side.items()})

    def _configured(self, model: PreTrainedModel) -> PreTrainedModel:
        """Start, end and padding ids where the model lacks them (a warm-started BERT has none)."""
        t, c = self.tokenizer, model.config
        if getattr(c, "decoder_start_token_id", None) is None:
            c.decoder_start_token_id = t.cls_token_id if t.cls_token_id is not None else t.bos_token_id
        c.pad_token_id = c.pad_token_id if c.pad_token_id is not None else t.pad_token_id
        c.eos_token_id = c.eos_token_id if getattr(c, "eos_token_id", None) is not None else (t.sep_token_id or t.eos_token_id)
        model.generation_config.decoder_start_token_id = c.decoder_start_token_id
        model.generation_config.pad_token_id, model.generation_config.eos_token_id = c.pad_token_id, c.eos_token_id
        self.decoder_start = c.decoder_start_token_id
        if self.decoder_start is None:
            raise ConfigError([f"model.source: {self.resolved.location} has no decoder start token (decoder_start_token_id, "
                               "or a [CLS]/BOS token in its tokenizer)"])
        return model

    def load_trained(self) -> nn.Module:
        model = self.hf.load_trained()
        self.tokenizer = self.hf.tokenizer
        return self._configured(model)

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        return self.hf.layer_groups(model)

    def card_usage(self) -> str:
        return (
            "```python\nfrom transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n"
            'tokenizer = AutoTokenizer.from_pretrained("path/to/best")\n'
            'model = AutoModelForSeq2SeqLM.from_pretrained("path/to/best")\n'
            'inputs = tokenizer(["your source text"], return_tensors="pt", return_token_type_ids=False)\n'
            "ids = model.generate(**inputs, max_new_tokens=64)\n"
            "print(tokenizer.batch_decode(ids, skip_special_tokens=True))\n```"
        )

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        self.hf.save(model, folder, weights)

    # ---- tensors ----------------------------------------------------------------------------

    @property
    def max_length(self) -> int:
        return token_limit(self.tokenizer, self.config.data.max_length)

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> list[dict[str, Any]]:
        """Source ids (and target ids) per row, tokenized once and unpadded (`train` unused)."""
        s = self.options
        # cut by characters first (data/text_limits.py): a tokenizer tokenizes a huge cell whole before truncating
        sources, cut_chars = cap_texts([s.source_prefix + text for text in rows.inputs["source"]],
                                       char_limit(self.max_length))
        encoded = self.tokenizer(sources, truncation=True, max_length=self.max_length)["input_ids"]
        features = [{"input_ids": ids} for ids in encoded]
        cut = sum(len(ids) >= self.max_length or c for ids, c in zip(encoded, cut_chars))
        if labelled:
            texts, cut_targets = cap_texts(rows.labels, char_limit(s.max_target_length))
            targets = self.tokenizer(text_target=texts, truncation=True, max_length=s.max_target_length)["input_ids"]
            for feature, ids in zip(features, targets):
                feature["labels"] = ids
            self.truncated["targets"] += sum(len(ids) >= s.max_target_length or c for ids, c in zip(targets, cut_targets))
        if cut:
            log.info("%s: %d of %d sources reached max_length=%d and were cut", rows.source, cut, len(rows), self.max_length)
        self.truncated["sources"] += cut
        return features

    def lengths(self, dataset: list[dict[str, Any]]) -> list[int]:
        return [len(f["input_ids"]) + len(f.get("labels", ())) for f in dataset]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Sources right-padded, (B, S); labels padded with -100 to the batch's longest target, (B, T),
        and `decoder_input_ids`, the targets shifted right after the start token, (B, T)."""
        batch = padded([f["input_ids"] for f in features], self.tokenizer.pad_token_id)
        if "labels" in features[0]:
            longest = max(len(f["labels"]) for f in features)
            labels = torch.full((len(features), longest), IGNORE, dtype=torch.long)
            for i, f in enumerate(features):
                labels[i, : len(f["labels"])] = torch.tensor(f["labels"])
            if self.decoder_start is None:
                raise RuntimeError("seq2seq: build_model() or load_trained() sets the decoder start token before collate")
            start = torch.full((len(features), 1), self.decoder_start, dtype=torch.long)
            shifted = torch.cat([start, labels[:, : longest - 1]], dim=1)
            batch["labels"] = labels
            batch["decoder_input_ids"] = shifted.masked_fill(shifted == IGNORE, self.tokenizer.pad_token_id or 0)
        return batch

    # ---- loss, metrics, predictions ---------------------------------------------------------

    def _logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=batch["decoder_input_ids"]).logits  # (B, T, V)

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The generated outputs of an unlabelled batch (see tasks/_generation.py)."""
        return {"generated": self._generate(model, batch)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean cross-entropy over target tokens; in evaluation, outputs per-row loss sums and token
        counts, plus generated ids (tasks/_generation.py)."""
        logits = self._logits(model, batch).float()  # (B, T, V)
        labels = batch["labels"]  # (B, T)
        smoothing = self.config.training.label_smoothing_factor if model.training else 0.0
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, label_smoothing=smoothing)
        if model.training:
            return loss, {}
        per_token = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")  # (B, T)
        outputs = {"loss_sums": per_token.sum(1), "tokens": (labels != IGNORE).sum(1)}
        if self.options.generate_on_eval:
            outputs["generated"] = self._generate(model, batch)
        return loss, outputs

    @torch.no_grad()
    def _generate(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Generated ids, (B, T), -1 from the end on (the start token dropped)."""
        model = getattr(model, "module", model)  # generate lives on the model, not on a DDP wrapper
        s = self.options
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],  # type: ignore[operator]
                             max_new_tokens=s.max_new_tokens, num_beams=s.num_beams, do_sample=False)  # torch types Module.__getattr__ as Tensor | Module
        return cut_at_stop(out[:, 1:], stop_ids(model, self.tokenizer))

    def batch_outputs(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> list[Any]:
        return generated_rows(outputs, self.tokenizer)

    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]:
        """Loss per target token and perplexity; with generated outputs, BLEU and ROUGE against the targets."""
        scores: dict[str, Any] = token_loss(outputs)
        if outputs and outputs[0].text is not None:
            scores.update(generation_metrics([o.text for o in outputs], rows.labels))
        return scores

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        """Per row: the source, the generated output and (when scored) the row's loss per token."""
        records = []
        for source, out in zip(rows.inputs["source"], outputs):
            record: dict[str, Any] = {"source": source, "output": out.text}
            if out.tokens > 0:
                record["loss"] = round(out.loss_sum / out.tokens, 6)
            records.append(record)
        return records
