"""Exact match and F1 for extractive question answering, as the SQuAD evaluation scripts define them.

Both compare a predicted answer with each gold answer after normalization (lower case, punctuation
and the articles a/an/the removed, whitespace collapsed) and keep the best. F1 counts the words two
answers share. An unanswerable question (SQuAD 2.0) has the empty answer as its only gold answer,
and a prediction scores 1 on it only when it is empty too.

Written here rather than taken from `evaluate`: its `squad` metric is a script fetched from the
Hub on first use, which fails offline, and the definition is twenty lines.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    predicted, true = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not true:  # an empty answer matches only an empty answer
        return float(predicted == true)
    shared = sum((Counter(predicted) & Counter(true)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(true)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: list[str], golds: list[list[str]]) -> dict[str, Any]:
    """Mean exact match and F1 (0 to 1) of `predictions` against each question's gold answers.

    A question with no gold answers is unanswerable. When there are any, also `has_answer_f1`
    (answerable questions only) and `no_answer_accuracy` (how often the model abstained on the
    unanswerable ones) are given.
    """
    em, f1, answerable = [], [], []
    for prediction, gold in zip(predictions, golds):
        gold = gold or [""]
        em.append(max(exact_match(prediction, g) for g in gold))
        f1.append(max(token_f1(prediction, g) for g in gold))
        answerable.append(gold != [""])
    n = max(len(em), 1)
    scores: dict[str, Any] = {"exact_match": sum(em) / n, "f1": sum(f1) / n}
    if not all(answerable):
        has = [s for s, a in zip(f1, answerable) if a]
        no = [s for s, a in zip(em, answerable) if not a]
        scores["has_answer_f1"] = sum(has) / max(len(has), 1)
        scores["no_answer_accuracy"] = sum(no) / len(no)
    return scores
