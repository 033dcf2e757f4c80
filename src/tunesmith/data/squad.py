"""Questions about passages, for extractive question answering: SQuAD JSON and JSONL.

A row is one question: its id, the question, the context passage and its gold answers, each a
span of the context (`text` and the character `answer_start`). Two layouts are read:

- `.json`: the official SQuAD file, `{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}`,
  each question `{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"}`. A row's
  line is its question's position in the file (1-based), since JSON has no useful line numbers.
- `.jsonl`: one question per line in the Hugging Face `squad` layout, `answers` being
  `{"text": [...], "answer_start": [...]}` (a list of `{"text", "answer_start"}` objects is read too).

An answer without `answer_start` is looked up in the context (its first occurrence). An answer whose
text is not at its `answer_start` in the context, or not in it at all, makes a bad row: skipped
with a warning under `data.bad_rows: skip`, an error naming the line under `error`. A question with
no answers (empty lists, or `is_impossible: true`) is unanswerable, as in SQuAD 2.0.

Rows are `LabelledRows` with input columns `id`, `question`, `context`; each label is the answers
dict `{"text": [...], "answer_start": [...]}`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tunesmith.data.labelled import LabelledRows
from tunesmith.data.readers import jsonl_objects, not_found, read_utf8
from tunesmith.errors import DataError

log = logging.getLogger("tunesmith")

SUFFIXES = (".json", ".jsonl")


class _BadRow(Exception):
    """A row that `bad_rows` decides about (skip or stop); the message says what is wrong."""


def read_squad(path: str | Path, columns: dict[str, str], labelled: bool = True, bad_rows: str = "skip") -> LabelledRows:
    """Reads questions, contexts and (when `labelled`) answers.

    Args:
        path: a SQuAD `.json` file or a `.jsonl` file of one question per line.
        columns: the JSONL keys for `id`, `question`, `context` and `answers` (see
            `question_answering.*_column`); the official `.json` layout has fixed keys.
        labelled: read answers (False for `tunesmith predict`).
        bad_rows: "skip" drops rows with an empty question or context or a misplaced answer (with a
            warning), "error" stops on the first.

    Raises:
        DataError: missing or empty file, unknown format, a missing key, a value of the wrong type,
            or a bad row under "error"; each names the file and line (or question number).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(not_found(path) if not path.exists() else f"expected a data file but got a directory: {path}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown format {suffix!r} for question answering; use SQuAD JSON (.json) or JSONL "
                        "(.jsonl) with question, context and answers")
    records = _official_records(path) if suffix == ".json" else _jsonl_records(path, columns, labelled)
    rows = LabelledRows(source=str(path), inputs={"id": [], "question": [], "context": []}, labels=[], lines=[])
    bad, found = [], 0
    for line, record in records:
        try:
            row = _checked(record, labelled)
        except _BadRow as exc:
            if bad_rows == "error":
                raise DataError(f"{path}, {_where(suffix, line)}: {exc}; fix the row or set data.bad_rows: skip") from None
            bad.append((line, str(exc)))
            continue
        found += row.pop("located")
        rows.inputs["id"].append(row["id"] or str(line))
        rows.inputs["question"].append(row["question"])
        rows.inputs["context"].append(row["context"])
        rows.labels.append(row["answers"])
        rows.lines.append(line)
    if bad:
        first_line, first = bad[0]
        log.warning("%s: skipping %d bad rows (first at %s: %s)", path, len(bad), _where(suffix, first_line), first)
    if found:
        log.info("%s: %d answers had no answer_start and were located in their context", path, found)
    if len(rows) == 0:
        raise DataError(f"{path}: no usable questions found" + (f" ({len(bad)} bad rows skipped)" if bad else ""))
    rows.skipped = len(bad)
    return rows


def _where(suffix: str, line: int) -> str:
    return f"line {line}" if suffix == ".jsonl" else f"question {line}"


def _official_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Flat records from the nested SQuAD layout, numbered by question."""
    try:
        document = json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); SQuAD files hold one object "
                        'with a "data" list (or use .jsonl, one question per line)') from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataError(f'{path}: expected the SQuAD layout, an object with a "data" list of articles '
                        "(for one question per line, name the file .jsonl)")
    records: list[tuple[int, dict[str, Any]]] = []
    for article in document["data"]:
        for paragraph in _list(article, "paragraphs", path):
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            for qa in _list(paragraph, "qas", path):
                if not isinstance(qa, dict):
                    raise DataError(f"{path}, question {len(records) + 1}: expected an object, got {type(qa).__name__}")
                answers = [] if qa.get("is_impossible") else qa.get("answers")
                records.append((len(records) + 1, {"id": qa.get("id"), "question": qa.get("question"),
                                                   "context": context, "answers": answers}))
    return records


def _list(parent: Any, key: str, path: Path) -> list:
    value = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(value, list):
        raise DataError(f'{path}: every {"article" if key == "paragraphs" else "paragraph"} needs a {key!r} list '
                        "(the SQuAD layout: data -> paragraphs -> qas)")
    return value


def _jsonl_records(path: Path, columns: dict[str, str], labelled: bool) -> list[tuple[int, dict[str, Any]]]:
    records = []
    for number, row in jsonl_objects(path):
        for role in ("question", "context") + (("answers",) if labelled else ()):
            if columns[role] not in row:
                found = ", ".join(repr(k) for k in row)
                raise DataError(f"{path}, line {number}: key {columns[role]!r} not found; keys are {found} "
                                f"(set question_answering.{role}_column to the right name)")
        records.append((number, {"id": row.get(columns["id"]), "question": row[columns["question"]],
                                 "context": row[columns["context"]], "answers": row.get(columns["answers"])}))
    return records


def _checked(record: dict[str, Any], labelled: bool) -> dict[str, Any]:
    """The record with answers as `{"text": [...], "answer_start": [...]}`, each checked against the context."""
    question, context = record["question"], record["context"]
    for role, value in (("question", question), ("context", context)):
        if not isinstance(value, str) or not value.strip():
            raise _BadRow(f"the {role} is empty or not text ({json.dumps(value)[:60]})")
    row = {"id": None if record["id"] is None else str(record["id"]), "question": question, "context": context,
           "answers": {"text": [], "answer_start": []}, "located": 0}
    if not labelled:
        return row
    for text, start in _answer_pairs(record["answers"]):
        if start is None:
            start = context.find(text)
            row["located"] += 1
        if start < 0 or context[start:start + len(text)] != text:
            at = f"at answer_start {start}" if start >= 0 else "anywhere"
            raise _BadRow(f"answer {text!r} is not in the context {at}; answer_start counts characters from 0")
        row["answers"]["text"].append(text)
        row["answers"]["answer_start"].append(start)
    return row


def _answer_pairs(answers: Any) -> list[tuple[str, int | None]]:
    """(text, answer_start or None) for each answer, from either answers layout."""
    if answers is None:
        raise _BadRow('no answers; an unanswerable question has an empty answers list or "is_impossible": true')
    if isinstance(answers, dict):
        texts, starts = answers.get("text"), answers.get("answer_start", [None] * len(answers.get("text") or []))
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise _BadRow('answers must be {"text": [...], "answer_start": [...]} with one start per text')
        pairs = list(zip(texts, starts))
    elif isinstance(answers, list):
        if not all(isinstance(a, dict) for a in answers):
            raise _BadRow('answers must be a list of {"text": ..., "answer_start": ...} objects')
        pairs = [(a.get("text"), a.get("answer_start")) for a in answers]
    else:
        raise _BadRow(f"answers must be an object or a list, got {type(answers).__name__}")
    for text, start in pairs:
        if not isinstance(text, str) or not text.strip():
            raise _BadRow(f"an answer text is empty or not text ({json.dumps(text)[:60]})")
        if start is not None and (isinstance(start, bool) or not isinstance(start, int)):
            raise _BadRow(f"answer_start must be a whole number of characters, got {json.dumps(start)[:30]}")
    return pairs


def answerable(rows: LabelledRows) -> list[bool]:
    """Whether each row has at least one gold answer."""
    return [bool(a["text"]) for a in rows.labels]


def as_text_rows(rows: LabelledRows) -> LabelledRows:
    """Question and context as text columns and the first answer as the label, for whole-row checks."""
    return LabelledRows(source=rows.source, inputs={"question": rows.inputs["question"], "context": rows.inputs["context"]},
                        labels=[a["text"][0] if a["text"] else "" for a in rows.labels], lines=rows.lines)
