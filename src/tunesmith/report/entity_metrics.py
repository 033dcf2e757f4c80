"""Entity-level scores for tagged sequences, with seqeval (conlleval's default, lenient mode).

An entity counts as found only when its type and its exact word span match, so a half-found name
scores nothing; this is the number NER papers report. Word accuracy is given beside it because it
is high even for a model that finds no entity (most words are `O`).
"""

from __future__ import annotations

from typing import Any


def entity_metrics(true_tags: list[list[str]], predicted_tags: list[list[str]]) -> dict[str, Any]:
    """Scores predicted tag sequences against the true ones (both one list of tags per sentence).

    Returns:
        `precision`, `recall`, `f1` (micro-averaged over entities), `macro_f1` (mean F1 over entity
        types), `accuracy` (per word), and `per_class` ({type: precision, recall, f1, support}).
    """
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    words = sum(len(t) for t in true_tags)
    correct = sum(a == b for t, p in zip(true_tags, predicted_tags) for a, b in zip(t, p))
    report = classification_report(true_tags, predicted_tags, output_dict=True, zero_division=0)
    per_class = {
        name: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
               "support": int(v["support"])}
        for name, v in sorted(report.items()) if not name.endswith(" avg")
    }
    scored = [v["f1"] for v in per_class.values() if v["support"] > 0]
    return {
        "accuracy": correct / max(words, 1),
        "precision": float(precision_score(true_tags, predicted_tags, zero_division=0)),
        "recall": float(recall_score(true_tags, predicted_tags, zero_division=0)),
        "f1": float(f1_score(true_tags, predicted_tags, zero_division=0)),
        "macro_f1": sum(scored) / len(scored) if scored else 0.0,
        "per_class": per_class,
    }


def entity_spans(words: list[str], tags: list[str]) -> list[dict[str, Any]]:
    """The entities of one tagged sentence with character offsets into `" ".join(words)`.

    Each span: `type`, `start` and `end` (characters, end exclusive), `text`, and `words`
    ([first, last + 1] word indices).
    """
    from seqeval.metrics.sequence_labeling import get_entities

    starts, offset = [], 0
    for word in words:
        starts.append(offset)
        offset += len(word) + 1
    text = " ".join(words)
    spans = []
    for kind, first, last in get_entities(list(tags)):
        start, end = starts[first], starts[last] + len(words[last])
        spans.append({"type": kind, "start": start, "end": end, "text": text[start:end], "words": [first, last + 1]})
    return spans
