"""Extractive question answering (SQuAD style) on a transformer encoder.

Rows are questions with a context passage and gold answers (`data/squad.py`). Each question and its
context become one or more windows of `data.max_length` tokens: a long context is split with
`question_answering.doc_stride` tokens of overlap, so an answer near a cut is whole in some window.
The model (`AutoModelForQuestionAnswering`'s head) scores every token as the answer's start and as
its end. A window is trained to point at the first gold answer's tokens, or at the [CLS] token
(position 0) when the answer is not inside it or the question is unanswerable.

To answer a question, every window's best `n_best` starts and ends are paired (start <= end, at
most `max_answer_length` tokens, both in the context) and the pair with the highest start + end
score over all windows wins; its characters in the context are the answer. When the data holds
unanswerable questions (SQuAD 2.0), the answer is empty if the lowest [CLS] score over the
windows beats the best span's score by more than `null_score_threshold`. Scores are SQuAD's exact
match and F1 (`report/qa_metrics.py`).

The engine sees one example per window. A window's output is its (tokens, 2) start/end logits, and
`row_outputs` joins each question's windows into its answer with the token offsets it keeps from
tokenizing, so metrics and predictions see one answer per question.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tunesmith.config import RunConfig, Section
from tunesmith.data.labelled import LabelledRows, read_splits
from tunesmith.data.squad import answerable, as_text_rows, read_squad
from tunesmith.data.text_limits import MAX_CONTEXT_CHARS, cap_texts, char_limit
from tunesmith.errors import DataError
from tunesmith.models.hf_family import HFModel
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.models.sources import load_fast_tokenizer, token_limit
from tunesmith.report.qa_metrics import squad_metrics
from tunesmith.tasks import register_task

log = logging.getLogger("tunesmith")


# ---- config section `question_answering` ----------------------------------------------------------

class QuestionAnsweringConfig(Section):
    question_column: str = "question"
    """JSONL key of the question (the official SQuAD `.json` layout has fixed keys)."""
    context_column: str = "context"
    """JSONL key of the passage the answer is taken from."""
    answers_column: str = "answers"
    """JSONL key of the gold answers: `{"text": [...], "answer_start": [...]}` (character offsets
    into the context; without `answer_start` the text is looked up), empty for unanswerable."""
    id_column: str = "id"
    """JSONL key of the question id, kept in predictions (the line number when absent)."""
    doc_stride: int | None = Field(None, gt=0)
    """A context longer than `data.max_length` is read in overlapping windows; this many tokens of
    each window repeat in the next one. `null`: a third of `data.max_length` (128 for 384)."""
    max_answer_length: int = Field(30, gt=0)
    """Longest answer, in tokens, that is ever predicted."""
    n_best: int = Field(20, gt=0)
    """Start and end positions tried per window (the highest-scoring this many of each)."""
    null_score_threshold: float = 0.0
    """Unanswerable questions (SQuAD 2.0 style, when the data has any): answer nothing when the
    no-answer score beats the best span's score by more than this (raise it to answer more often)."""


@dataclass
class Windows:
    """The windows of some rows: model inputs, and for each window its row and, per token, the
    (start, end) characters in the context it covers (None outside the context)."""

    features: list[dict[str, Any]]
    row_of: list[int]
    offsets: list[list[tuple[int, int] | None]]
    unreachable: int  # labelled answerable rows whose first answer lies in no window
    contexts_cut: int = 0  # contexts cut to MAX_CONTEXT_CHARS characters before tokenizing


def _fast_tokenizer(resolved, kwargs: dict[str, Any]):
    """Windows and answer spans need offsets and overflowing tokens, which only fast tokenizers give."""
    return load_fast_tokenizer(resolved, kwargs, "question answering", "to map answers to tokens")


@register_task("question-answering")
class QuestionAnsweringTask:
    name: ClassVar[str]  # set by @register_task
    metric_names: ClassVar[tuple[str, ...]] = ("f1", "exact_match")
    settings: ClassVar[type[Section] | None] = QuestionAnsweringConfig
    defaults = {"data.max_length": 384}  # a question and a passage need more than the 128 shared default
    supports_activation_cache: ClassVar[bool] = True  # inputs are fixed token ids; groups are embeddings + blocks

    @property
    def options(self) -> QuestionAnsweringConfig:
        """This task's section, `config.question_answering`, typed (the assembled schema adds that field)."""
        return self.config.task_settings

    def __init__(self, config: RunConfig):
        self.config = config
        self.hf = HFModel("AutoModelForQuestionAnswering", config.model, tokenizer=_fast_tokenizer)
        self.resolved = self.hf.resolved
        self.train_rows: LabelledRows | None = None
        self.eval_rows: LabelledRows | None = None
        self.label_names: list[str] = []  # answers are spans, not classes
        self.tokenizer: Any = None  # read with the model (HFModel.tokenizer); transformers types it loosely
        self.with_unanswerable = False
        self.truncated = 0  # long contexts are read in windows, never cut
        self.data_checks: dict[str, int] = {}
        self._windows: dict[int, tuple[LabelledRows, Windows]] = {}

    # ---- data -------------------------------------------------------------------------------

    def _read(self, path: str, labelled: bool = True) -> LabelledRows:
        q = self.options
        columns = {"id": q.id_column, "question": q.question_column, "context": q.context_column,
                   "answers": q.answers_column}
        return read_squad(path, columns, labelled, self.config.data.bad_rows)

    def preflight(self) -> None:
        """Reads and checks the data before any weights load."""
        self.train_rows, self.eval_rows, self.data_checks = read_splits(
            self.config.data, self.config.training.seed, self._read, as_text_rows)
        self.with_unanswerable = not all(answerable(self.eval_rows) + answerable(self.train_rows or self.eval_rows))

    def unlabelled_rows(self, path: str) -> LabelledRows:
        return self._read(path, labelled=False)

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"unanswerable_questions": self.with_unanswerable}
        for split, rows in (("train", self.train_rows), ("validation", self.eval_rows)):
            if rows is not None:
                has = answerable(rows)
                facts[split] = {"source": rows.source, "rows": len(rows), "skipped": rows.skipped,
                                "unanswerable": has.count(False), "contexts": len(set(rows.inputs["context"]))}
                if id(rows) in self._windows:
                    windows = self._windows[id(rows)][1]
                    facts[split].update(windows=len(windows.features), answers_in_no_window=windows.unreachable,
                                        contexts_cut_by_characters=windows.contexts_cut)
        facts.update(self.data_checks)
        return facts

    # ---- model ------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        """The source's encoder with a start/end head; under `model.pretrained: false` the same
        architecture from random initialization, with the source's tokenizer."""
        model = self.hf.build()  # a source with another head (a classifier) gets a new start/end head
        self.tokenizer = self.hf.tokenizer
        return model

    def load_trained(self) -> nn.Module:
        model = self.hf.load_trained()
        self.tokenizer = self.hf.tokenizer
        self.with_unanswerable |= bool(getattr(model.config, "tunesmith_unanswerable", False))
        return model

    def layer_groups(self, model: nn.Module) -> list[LayerGroup]:
        return self.hf.layer_groups(model)

    def card_usage(self) -> str:
        # transformers 5 has no question-answering pipeline: the best span, the plain way.
        return (
            "```python\nimport torch\nfrom transformers import AutoModelForQuestionAnswering, AutoTokenizer\n"
            'tokenizer = AutoTokenizer.from_pretrained("path/to/best")\n'
            'model = AutoModelForQuestionAnswering.from_pretrained("path/to/best")\n'
            'question, context = "Who wrote it?", "The book was written by Ann Lee in 1990."\n'
            'inputs = tokenizer(question, context, return_tensors="pt", return_offsets_mapping=True)\n'
            'offsets = inputs.pop("offset_mapping")[0]\n'
            "with torch.no_grad():\n    out = model(**inputs)\n"
            "in_context = torch.tensor([i == 1 for i in inputs.sequence_ids(0)])\n"
            "start = out.start_logits[0].masked_fill(~in_context, -1e4)\nend = out.end_logits[0].masked_fill(~in_context, -1e4)\n"
            "scores = start[:, None] + end[None, :]  # (start, end) pairs; keep end >= start, at most 30 tokens\n"
            "scores = scores.masked_fill(~torch.ones_like(scores, dtype=torch.bool).triu().tril(29), -1e9)\n"
            "s, e = divmod(int(scores.argmax()), scores.shape[1])\n"
            "print(context[offsets[s][0]:offsets[e][1]])\n```\n"
            "`tunesmith predict` does the same over long contexts (windows) and many questions."
        )

    def save(self, model: nn.Module, folder: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        # Kept with the model so that `predict` on unlabelled questions may answer nothing too.
        if getattr(model, "config", None) is not None:
            model.config.tunesmith_unanswerable = self.with_unanswerable  # type: ignore[union-attr]  # torch types Module.__getattr__ as Tensor | Module
        self.hf.save(model, folder, weights)

    # ---- tensors ----------------------------------------------------------------------------

    @property
    def max_length(self) -> int:
        return token_limit(self.tokenizer, self.config.data.max_length)

    @property
    def doc_stride(self) -> int:
        return self.options.doc_stride or self.max_length // 3

    def windows(self, rows: LabelledRows) -> Windows:
        """The windows of `rows`, tokenized once per rows object (evaluation maps outputs back with them).

        Raises:
            DataError: a question leaves no more than `doc_stride` tokens of `max_length` for the context.
        """
        if id(rows) not in self._windows or self._windows[id(rows)][0] is not rows:
            if len(self._windows) >= 4:  # batch-size probes make throwaway rows; keep memory bounded
                self._windows.pop(next(iter(self._windows)))
            self._windows[id(rows)] = (rows, self._split(rows))
        return self._windows[id(rows)][1]

    def _split(self, rows: LabelledRows) -> Windows:
        questions, contexts, cut = self._capped(rows)
        self._check_room(rows, questions)
        encoded = self.tokenizer(questions, contexts, truncation="only_second",
                                 max_length=self.max_length, stride=self.doc_stride,
                                 return_overflowing_tokens=True, return_offsets_mapping=True)
        keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
        windows = Windows([], list(encoded["overflow_to_sample_mapping"]), [], 0, cut)
        found = np.zeros(len(rows), dtype=bool)
        for j, row in enumerate(windows.row_of):
            sequence = encoded.sequence_ids(j)
            offsets = [tuple(o) if s == 1 else None for o, s in zip(encoded["offset_mapping"][j], sequence)]
            feature = {k: encoded[k][j] for k in keys}
            feature["labels"] = _span_positions(offsets, rows.labels[row])
            found[row] |= feature["labels"] != [0, 0]
            windows.features.append(feature)
            windows.offsets.append(offsets)
        windows.unreachable = int((np.array(answerable(rows)) & ~found).sum())
        if windows.unreachable:
            log.info("%s: %d answers lie in no window of max_length=%d (longer than a window, or cut); their windows "
                     "are trained to answer nothing", rows.source, windows.unreachable, self.max_length)
        return windows

    def _capped(self, rows: LabelledRows) -> tuple[list[str], list[str], int]:
        """Questions cut by characters to what one window could hold, contexts only past an absurd
        length (`data/text_limits.py`): tokenizers tokenize a whole string before cutting it."""
        # a question that long fills its window, which `_check_room` reports
        questions, _ = cap_texts(rows.inputs["question"], char_limit(self.max_length))
        contexts, cut_contexts = cap_texts(rows.inputs["context"], MAX_CONTEXT_CHARS)
        if any(cut_contexts):
            first = rows.lines[cut_contexts.index(True)]
            log.warning("%s: %d contexts longer than %d characters were cut to that length before tokenizing "
                        "(first at line %d); answers past the cut are in no window", rows.source, sum(cut_contexts),
                        MAX_CONTEXT_CHARS, first)
        return questions, contexts, sum(cut_contexts)

    def _check_room(self, rows: LabelledRows, questions: list[str]) -> None:
        """Each window holds the question, special tokens and more context tokens than the stride."""
        stride = self.doc_stride
        lengths = [len(ids) for ids in self.tokenizer(questions, add_special_tokens=False)["input_ids"]]
        longest = int(np.argmax(lengths))
        room = self.max_length - lengths[longest] - self.tokenizer.num_special_tokens_to_add(pair=True)
        if room <= stride:
            raise DataError(f"{rows.source}, line {rows.lines[longest]}: the question takes {lengths[longest]} tokens, "
                            f"leaving {max(room, 0)} of data.max_length={self.max_length} for the context, not more than "
                            f"question_answering.doc_stride={stride}; raise data.max_length, lower the stride or "
                            "shorten the question")

    def dataset(self, rows: LabelledRows, train: bool, labelled: bool = True) -> list[dict[str, Any]]:
        """Model inputs per window (with [start, end] token labels when `labelled`), unpadded."""
        features = self.windows(rows).features
        return features if labelled else [{k: v for k, v in f.items() if k != "labels"} for f in features]

    def lengths(self, dataset: list[dict[str, Any]]) -> list[int]:
        return [len(f["input_ids"]) for f in dataset]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pads inputs to the batch's longest window, (B, T); labels are (B, 2) token positions."""
        longest, size = max(len(f["input_ids"]) for f in features), len(features)
        batch = {"input_ids": torch.full((size, longest), self.tokenizer.pad_token_id or 0, dtype=torch.long),
                 "attention_mask": torch.zeros((size, longest), dtype=torch.long)}
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = torch.zeros((size, longest), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            batch["attention_mask"][i, :n] = 1
            for key in ("input_ids", "token_type_ids"):
                if key in f:
                    batch[key][i, :n] = torch.tensor(f[key])
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    # ---- loss, metrics, predictions ---------------------------------------------------------

    def _logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        return torch.stack([out.start_logits, out.end_logits], dim=-1)  # (B, T, 2)

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._logits(model, batch)  # (B, T, 2) start and end logits

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean of the start and end cross-entropies, as BERT's SQuAD head defines it."""
        logits = self._logits(model, batch).float()
        labels = batch["labels"]  # (B, 2)
        loss = (F.cross_entropy(logits[..., 0], labels[:, 0]) + F.cross_entropy(logits[..., 1], labels[:, 1])) / 2
        return loss, logits

    def batch_outputs(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[Any]:
        """Per window: (tokens, 2) start and end logits of its real tokens, padding dropped."""
        lengths = batch["attention_mask"].sum(1).tolist()
        logits = outputs.detach().float().cpu().numpy()
        return [window[:n] for window, n in zip(logits, lengths)]

    def row_outputs(self, rows: LabelledRows, examples: list[Any]) -> list[Any]:
        """Per question: the best answer over its windows (an answer record, `_pick`)."""
        q = self.options
        windows = self.windows(rows)
        per_row: list[list[int]] = [[] for _ in range(len(rows))]
        for j, row in enumerate(windows.row_of):
            per_row[row].append(j)
        best = []
        for row, context in enumerate(rows.inputs["context"]):
            spans, null = [], np.inf
            for j in per_row[row]:
                start, end = examples[j][:, 0], examples[j][:, 1]
                null = min(null, float(start[0] + end[0]))
                spans += _candidate_spans(start, end, windows.offsets[j], q.n_best, q.max_answer_length)
            best.append(_pick(spans, null, context, self.with_unanswerable, q.null_score_threshold))
        return best

    def metrics(self, rows: LabelledRows, outputs: list[Any]) -> dict[str, Any]:
        """SQuAD exact match and F1 of the questions' answers against their gold answers."""
        return squad_metrics([a["answer"] for a in outputs], [a["text"] for a in rows.labels])

    def predictions(self, rows: LabelledRows, outputs: list[Any]) -> list[dict[str, Any]]:
        """Per question: its id and text, the answer with its character span in the context, the
        span's score (start + end logit) and its probability among the candidates."""
        return [{"id": qid, "question": question, **answer}
                for qid, question, answer in zip(rows.inputs["id"], rows.inputs["question"], outputs)]


def _span_positions(offsets: list[tuple[int, int] | None], answers: dict[str, list]) -> list[int]:
    """[start, end] token positions of the first answer in this window, or [0, 0] ([CLS]) when it
    is not wholly inside it or there is none."""
    if not answers["text"]:
        return [0, 0]
    first = answers["answer_start"][0]
    last = first + len(answers["text"][0])  # exclusive
    spans = {i: o for i, o in enumerate(offsets) if o is not None}  # context tokens only
    inside = list(spans)
    if not inside or spans[inside[0]][0] > first or spans[inside[-1]][1] < last:
        return [0, 0]
    start = next(i for i in inside if spans[i][1] > first)
    end = next(i for i in reversed(inside) if spans[i][0] < last)
    return [start, end]


def _candidate_spans(start: np.ndarray, end: np.ndarray, offsets: list[tuple[int, int] | None], n_best: int,
                     max_tokens: int) -> list[tuple[float, int, int]]:
    """(score, first char, end char) of the valid pairs among the n_best starts and ends."""
    spans, ends = [], np.argsort(-end)[:n_best]
    for s in np.argsort(-start)[:n_best]:
        if s >= len(offsets) or offsets[s] is None:
            continue
        for e in ends:
            if e < s or e - s + 1 > max_tokens or e >= len(offsets) or offsets[e] is None:
                continue
            spans.append((float(start[s] + end[e]), offsets[s][0], offsets[e][1]))
    return spans


def _pick(spans: list[tuple[float, int, int]], null: float, context: str, with_null: bool,
          threshold: float) -> dict[str, Any]:
    """The best span as an answer record; the empty answer when unanswerable wins (or nothing fits)."""
    scores = np.array([s for s, _, _ in spans] + ([null] if with_null else []), dtype=np.float64)
    probabilities = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum() if len(scores) else scores
    if not spans or (with_null and null > max(spans)[0] + threshold):
        chance = float(probabilities[-1]) if with_null and len(scores) else 0.0
        return {"answer": "", "start": None, "end": None, "score": round(null, 4), "probability": round(chance, 6)}
    i = int(np.argmax(probabilities[: len(spans)]))
    score, first, last = spans[i]
    return {"answer": context[first:last], "start": first, "end": last, "score": round(score, 4),
            "probability": round(float(probabilities[i]), 6)}
