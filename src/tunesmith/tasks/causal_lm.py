"""Causal-LM instruction tuning: a decoder language model learns to answer prompts as in the data.

Rows are chats or prompt/response pairs (`data/chat.py`). Each chat is rendered with the
tokenizer's chat template and tokenized piece by piece, so the prompt tokens are exactly those
the model sees when it generates; only response tokens (and the end-of-turn token that teaches
the model to stop) carry the loss, prompt and padding are -100. A row whose prompt alone fills
`data.max_length` is an error naming its line; a long answer is cut (and counted).

Evaluation scores the mean loss per response token, its perplexity, and (`causal_lm.generate_on_eval`)
the exact match of greedy generated answers with the references, whitespace and case ignored.
`causal_lm.packing` concatenates a training batch into one row whose position ids restart at every
example; transformers then builds a block-diagonal causal mask from them, so no attention crosses
examples and the loss equals the unpacked one. The model is `AutoModelForCausalLM`, so `best/`
loads in plain transformers (with LoRA: `best/` is the adapter, `best/merged/` the merged model).

Outputs per evaluated row are one float vector: [sum of token losses, response tokens, then the
generated token ids, -1 after the end]; `forward` of a training batch returns the logits.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tunesmith.config import RunConfig, Section
from tunesmith.data.chat import read_chats, segments
from tunesmith.data.labelled import LabelledRows, read_splits
from tunesmith.data.text_limits import cap_texts, char_limit
from tunesmith.errors import ConfigError, DataError
from tunesmith.models.hf_family import HFModel, plain_tokenizer
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.models.sources import token_limit
from tunesmith.tasks import OneOutputPerRow, register_task
from tunesmith.tasks._generation import cut_at_stop, generated_rows, padded, stop_ids, token_loss

log = logging.getLogger("tunesmith")
IGNORE = -100  # label of positions without a loss (prompt, padding)
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


# ---- config section `causal_lm` ----------------------------------------------------------

class CausalLMConfig(Section):
    messages_column: str = "messages"
    """JSONL key of a chat (a list of `{role, content}`); the last assistant message is the reference answer."""
    prompt_column: str = "prompt"
    """Key of the prompt in prompt/response rows (used when a row has no `messages_column`)."""
    response_column: str = "response"
    """Key of the response in prompt/response rows."""
    packing: bool = False
    """Pack each training batch into one row without padding; position ids restart at every
    example, so attention never crosses examples (same loss as unpacked, less padding computed).
    Packed batches are drawn at random, not grouped by length: grouping would pack the longest
    rows into one step and raise peak memory."""
    max_new_tokens: int = Field(32, gt=0)
    """Longest generated answer, in tokens, for evaluation and `tunesmith predict`."""
    generate_on_eval: bool = True
    """At each evaluation also generate an answer to every validation prompt (greedy) and score
    `exact_match` against the reference (whitespace and case ignored); off scores loss and perplexity only."""


@register_task("causal-lm")
class CausalLMTask(OneOutputPerRow):
    name: ClassVar[str]  # set by @register_task
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "perplexity", "exact_match")
    pipeline_tag = "text-generation"  # the Hub's name for the task
    settings: ClassVar[type[Section] | None] = CausalLMConfig
    supports_activation_cache: ClassVar[bool] = False  # generation needs the whole model; packed rows change shape

    @property
    def options(self) -> CausalLMConfig:
        """This task's section, `config.causal_lm`, typed (the assembled schema adds that field)."""
        return self.config.task_settings

    def __init__(self, config: RunConfig):
        self.config = config
        self.hf = HFModel("AutoModelForCausalLM", config.model, tokenizer=_tokenizer_with_pad)
        self.resolved = self.hf.resolved
        self.train_rows: LabelledRows | None = None
        self.eval_rows: LabelledRows | None = None
        self.label_names: list[str] = []  # answers are free text, not classes
        self.tokenizer: Any = None  # read with the model (HFModel.tokenizer); transformers types it loosely
        self.truncated = 0
        self.data_checks: dict[str, int] = {}

    # ---- data -------------------------------------------------------------------------------

    def _read(self, path: str, labelled: bool = True) -> LabelledRows:
        c = self.options
        return read_chats(path, c.messages_column, c.prompt_column, c.response_column, labelled,
                          self.config.data.bad_rows)

    def preflight(self) -> None:
        """Reads and checks the chats; also rejects `exact_match` as the best-model metric when no
        answers are generated.

        Raises:
            DataError: no data, malformed rows (file, line and key named), or too few rows to split.
            ConfigError: `metric_for_best_model: exact_match` with `causal_lm.generate_on_eval: false`.
        """
        if self.config.training.metric_for_best_model == "exact_match" and not self.options.generate_on_eval:
            raise ConfigError(["training.metric_for_best_model: exact_match needs generated answers; set "
                               "causal_lm.generate_on_eval: true or metric_for_best_model: loss"])
        self.train_rows, self.eval_rows, self.data_checks = read_splits(
            self.config.data, self.config.training.seed, self._read, _as_text)

    def unlabelled_rows(self, path: str) -> LabelledRows:
        return self._read(path, labelled=False)

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"labels": self.label_names}
        for split, rows in (("train", self.train_rows), ("validation", self.eval_rows)):
            if rows is not None:
                facts[split] = {"source": rows.source, "rows": len(rows), "skipped": rows.skipped,
                                "prompt_messages": sum(len(m) for m in rows.inputs["messages"])}
        facts["truncated_to_max_length"] = self.truncated
        facts.update(self.data_checks)
        return facts

    # ---- model ------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        """The source's decoder with its language-model head; under `model.pretrained: false` the
        same architecture from random initialization, with the source's tokenizer."""
        from tunesmith.strategies.lora import quantization_kwargs

        model = self.hf.build(new_head=False, **(quantization_kwargs(self.config) or _gguf(self.hf.kwargs)))
        self.tokenizer = self.hf.tokenizer
        return _dense(model)

    def load_trained(self) -> nn.Module:
        """Loads a fine-tuned model (a LoRA run's `best/merged/`), for evaluate/predict."""
        model = self.hf.load_trained(**_gguf(self.hf.kwargs))
        self.tokenizer = self.hf.tokenizer
        return _dense(model)

    def load_tokenizer(self) -> None:
        """The source's tokenizer (all that `dataset` and `collate` need), with a pad token."""
        self.tokenizer = self.hf.load_tokenizer()

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        return self.hf.layer_groups(model)

    def card_usage(self) -> str:
        return (
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            'model = AutoModelForCausalLM.from_pretrained("path/to/best")  # LoRA runs: path/to/best/merged\n'
            'tokenizer = AutoTokenizer.from_pretrained("path/to/best")\n'
            'chat = [{"role": "user", "content": "your prompt"}]\n'
            "ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)\n"
            "out = model.generate(**ids, max_new_tokens=64, do_sample=False)\n"
            'print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))\n```'
        )

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        self.hf.save(model, folder, weights)

    # ---- tensors ----------------------------------------------------------------------------

    @property
    def max_length(self) -> int:
        return token_limit(self.tokenizer, self.config.data.max_length, 2048)

    def encode(self, prompt: list[dict], answer: str | None) -> tuple[list[int], list[int], int]:
        """(token ids, labels, prompt length) of one chat: labels copy the response tokens and are
        -100 elsewhere; the prompt length counts the tokens before the last answer, which are the
        ids generation starts from. Not truncated."""
        ids: list[int] = []
        labels: list[int] = []
        prompt_length = 0
        for text, is_response in segments(self.tokenizer, prompt, answer):
            piece = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if is_response:
                prompt_length = len(ids)
            ids += piece
            labels += piece if is_response else [IGNORE] * len(piece)
        return ids, labels, prompt_length if answer is not None else len(ids)

    def _capped(self, prompt: list[dict], answer: str | None) -> tuple[list[dict], str | None, bool]:
        """The chat with each message cut by characters (`data/text_limits.py`) before it is rendered and
        tokenized, and whether anything was cut: a huge message would otherwise be tokenized whole."""
        limit = char_limit(self.max_length)
        contents, cut = cap_texts([m["content"] for m in prompt] + ([answer] if answer is not None else []), limit)
        capped = [{**m, "content": c} for m, c in zip(prompt, contents)]
        return capped, contents[-1] if answer is not None else None, any(cut)

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> list[dict[str, Any]]:
        """Token ids (and labels) per chat, tokenized once and unpadded. Evaluation rows also carry
        `prompt_ids`, the generation prompt.

        Raises:
            DataError: prompts that fill `data.max_length`, leaving no room for an answer (lines named).
        """
        features, too_long, truncated = [], [], 0
        for i, prompt in enumerate(rows.inputs["messages"]):
            prompt, answer, cut = self._capped(prompt, rows.labels[i] if labelled else None)
            ids, labels, prompt_length = self.encode(prompt, answer)
            if prompt_length >= self.max_length:
                too_long.append((rows.lines[i], prompt_length))
                continue
            truncated += len(ids) > self.max_length or cut
            feature = {"input_ids": ids[: self.max_length]}
            if labelled:
                feature["labels"] = labels[: self.max_length]
            if not train:
                feature["prompt_ids"] = ids[:prompt_length]
            features.append(feature)
        if too_long:
            shown = ", ".join(str(line) for line, _ in too_long[:10]) + (" ..." if len(too_long) > 10 else "")
            raise DataError(f"{rows.source}: {len(too_long)} rows have a prompt of data.max_length="
                            f"{self.max_length} tokens or more, leaving no room for the answer (lines {shown}; "
                            f"longest prompt {max(n for _, n in too_long)} tokens); raise data.max_length or "
                            "shorten those prompts")
        if truncated:
            log.info("%s: %d of %d answers reached max_length=%d and were cut", rows.source, truncated, len(rows),
                     self.max_length)
        self.truncated += truncated
        return features

    def lengths(self, dataset: list[dict[str, Any]]) -> list[int] | None:
        """Token counts for length-grouped batches; None for training rows under packing: a packed
        row has no padding to save, and grouping by length would pack the longest rows together, into
        the step that sets peak memory (and, with attention quadratic in the packed row, the slowest)."""
        if self.options.packing and dataset and "prompt_ids" not in dataset[0]:
            return None
        return [len(f["input_ids"]) for f in dataset]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Right-pads ids, mask and labels to the batch's longest row, (B, T); evaluation batches add
        the left-padded generation prompts, (B, P). Training batches under `causal_lm.packing`
        become one row."""
        if self.options.packing and "prompt_ids" not in features[0]:
            return self._packed(features)
        batch = padded([f["input_ids"] for f in features], self.tokenizer.pad_token_id, left=False)
        if "labels" in features[0]:
            labels = torch.full(batch["input_ids"].shape, IGNORE, dtype=torch.long)
            for i, f in enumerate(features):
                labels[i, : len(f["labels"])] = torch.tensor(f["labels"])
            batch["labels"] = labels
        if "prompt_ids" in features[0]:
            prompts = padded([f["prompt_ids"] for f in features], self.tokenizer.pad_token_id, left=True)
            batch.update(prompt_ids=prompts["input_ids"], prompt_mask=prompts["attention_mask"])
        return batch

    def _packed(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The batch as one row, (1, sum of lengths), without attention mask: transformers finds the
        examples from the restarting position ids. Each example's first token gets no label, so no
        example is trained to predict the start of the next (unpacked, that token is never a target)."""
        ids = torch.tensor([t for f in features for t in f["input_ids"]]).unsqueeze(0)
        positions = torch.cat([torch.arange(len(f["input_ids"])) for f in features]).unsqueeze(0)
        labels = torch.tensor([IGNORE if j == 0 else t for f in features for j, t in enumerate(f["labels"])])
        return {"input_ids": ids, "position_ids": positions, "labels": labels.unsqueeze(0)}

    # ---- loss, metrics, predictions ---------------------------------------------------------

    def _logits(self, model: nn.Module, batch: dict[str, torch.Tensor], keep: torch.Tensor | None = None) -> torch.Tensor:
        """The logits (B, T, V); with `keep`, a (B, T) mask, only those of the kept positions, (N, V).
        Where the model supports it the head projects only the kept positions: with the loss on short
        answers that skips most of the vocabulary projection (a fifth of SmolLM2's compute) and its
        (B, T, V) logits, the largest activation of a training step."""
        # No cache: transformers only reads packed examples from position ids when there is none.
        inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
        if keep is not None and _slices_logits(model):
            return model(**inputs, use_cache=False, logits_to_keep=keep).logits
        logits = model(**inputs, use_cache=False).logits
        return logits if keep is None else logits[keep]

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """The generated answers of an evaluation batch (tasks/_generation.py); the logits (B, T, V)
        of a training batch."""
        if "prompt_ids" not in batch:
            return self._logits(model, batch)
        return {"generated": self._generate(model, batch)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean cross-entropy over response tokens (next-token: position t predicts label t+1); in
        evaluation, outputs per-row loss sums and token counts, plus generated ids (tasks/_generation.py)."""
        targets = batch["labels"][:, 1:]  # (B, T-1)
        keep = F.pad(targets != IGNORE, (0, 1))  # (B, T): the positions whose next token carries the loss
        logits = self._logits(model, batch, keep).float()  # (N, V)
        wanted = targets[keep[:, :-1]]  # (N,)
        smoothing = self.config.training.label_smoothing_factor if model.training else 0.0
        loss = F.cross_entropy(logits, wanted, label_smoothing=smoothing)
        if model.training:
            return loss, {}
        per_token = F.cross_entropy(logits, wanted, reduction="none")  # (N,)
        rows = keep.nonzero(as_tuple=True)[0]
        outputs = {"loss_sums": per_token.new_zeros(len(targets)).index_add_(0, rows, per_token),
                   "tokens": keep.sum(1)}
        if self.options.generate_on_eval and "prompt_ids" in batch:
            outputs["generated"] = self._generate(model, batch)
        return loss, outputs

    @torch.no_grad()
    def _generate(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Greedy answers to the batch's prompts, (B, T) ids, -1 from the end on."""
        model = getattr(model, "module", model)  # generate lives on the model, not on a DDP wrapper
        prompts, n = batch["prompt_ids"], self.options.max_new_tokens
        out = model.generate(input_ids=prompts, attention_mask=batch["prompt_mask"], max_new_tokens=n,  # type: ignore[operator]
                             do_sample=False, num_beams=1, pad_token_id=self.tokenizer.pad_token_id)  # torch types Module.__getattr__ as Tensor | Module
        return cut_at_stop(out[:, prompts.shape[1]:], stop_ids(model, self.tokenizer))

    def batch_outputs(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> list[Any]:
        return generated_rows(outputs, self.tokenizer)

    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]:
        """Loss per response token and its perplexity; with generated answers, their exact match
        with the references."""
        scores: dict[str, Any] = token_loss(outputs)
        if outputs and outputs[0].text is not None:
            scores["exact_match"] = float(np.mean([_normal(o.text) == _normal(r) for o, r in zip(outputs, rows.labels)]))
        return scores

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        """Per row: the last prompt message, the generated answer and (when scored) the row's loss per token."""
        records = []
        for prompt, out in zip(rows.inputs["messages"], outputs):
            record: dict[str, Any] = {"prompt": prompt[-1]["content"]}
            if out.text is not None:
                record["response"] = out.text
            if out.tokens > 0:
                record["loss"] = round(out.loss_sum / out.tokens, 6)
            records.append(record)
        return records


def _slices_logits(model: nn.Module) -> bool:
    """Whether the model's head can project only masked positions (see `_head_slices`)."""
    inner: Any = getattr(model, "module", model)  # DDP; Any: torch types Module attributes as Tensor | Module
    base: nn.Module = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft
    return _head_slices(type(base))  # type: ignore[arg-type]  # classes hash by identity; mypy misreads type[Module]


@functools.cache
def _head_slices(model_class: type) -> bool:
    """True when the class's forward slices hidden states with transformers' `slice_logits_to_keep`
    in a version that reads a boolean (B, T) mask (older ones take an int or 1-D positions only)."""
    from transformers import modeling_utils

    helper: Callable[..., torch.Tensor] | None = getattr(modeling_utils, "slice_logits_to_keep", None)
    module_uses_it = getattr(sys.modules.get(model_class.__module__), "slice_logits_to_keep", None) is helper
    if helper is None or not module_uses_it:
        return False
    return helper(torch.zeros(1, 2, 1), torch.tensor([[True, False]])).shape == (1, 1)


def _tokenizer_with_pad(resolved, kwargs: dict[str, Any]):
    """The source's tokenizer, with a pad token.

    Raises:
        DataError: the tokenizer has no end-of-sequence token.
    """
    tokenizer = plain_tokenizer(resolved, kwargs)
    if tokenizer.eos_token is None:
        raise DataError(f"{resolved.location}: the tokenizer has no end-of-sequence token, so the model "
                        "cannot learn where an answer ends; use a tokenizer that defines eos_token")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked; any id will do
    return tokenizer


def _gguf(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A GGUF file loads de-quantized to float: the weights must train, and save as safetensors."""
    if "gguf_file" not in kwargs:
        return {}
    from transformers import GgufConfig

    return {"quantization_config": GgufConfig(dequantize=True)}


def _dense(model: nn.Module) -> nn.Module:
    """The de-quantized GGUF model as a plain one: without its GGUF quantizer, `save_pretrained`
    writes an ordinary checkpoint (transformers refuses to save a model it thinks is GGUF-quantized)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and getattr(quantizer.quantization_config, "quant_method", None) == "gguf":
        quantizer.remove_quantization_config(model)
    return model


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def _as_text(rows: LabelledRows) -> LabelledRows:
    """The chats as one JSON string each, for checks that compare whole rows (repeats, leaks)."""
    prompts = [json.dumps(m, ensure_ascii=False) for m in rows.inputs["messages"]]
    return LabelledRows(source=rows.source, inputs={"text": prompts}, labels=rows.labels, lines=rows.lines)
