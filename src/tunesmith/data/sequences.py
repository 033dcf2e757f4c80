"""Tagged sequences for token classification: CoNLL column files and JSONL, tag checks and splits.

A row is one sentence: its words and one tag per word. CoNLL files (`.txt`, `.conll`) hold one
word per line with the word in the first column and the tag in the last, a blank line between
sentences, and `-DOCSTART-` lines (document breaks) skipped. JSONL files hold one object per line
with a list of words and a list of tags. Tags must be `O` or a BIO (IOB2) / BIOES prefix, a dash and
the entity type (`B-PER`, `I-PER`, `E-PER`, `S-PER`); anything else stops with the file and line.
An `I-X` that starts an entity (after `O` or another type, as in IOB1 files) is accepted and read as
the start of an entity, as conlleval and seqeval's default mode do; the count is logged.

Rows are `LabelledRows` whose input column `tokens` holds word lists and whose labels are tag
lists, so the engine's sampling, line bookkeeping and label checks work unchanged. A row's line
is where its sentence starts.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path


from tunesmith.data.labelled import LabelledRows
from tunesmith.data.readers import jsonl_objects, not_found, read_utf8
from tunesmith.errors import DataError

log = logging.getLogger("tunesmith")

TOKENS = "tokens"
CONLL_SUFFIXES = (".txt", ".conll", ".iob", ".bio")
JSONL_SUFFIXES = (".jsonl", ".json")
_TAG = re.compile(r"^(O|[BIES]-\S+)$")


def read_tagged(path: str | Path, tokens_column: str = "tokens", tags_column: str | None = "tags",
                bad_rows: str = "skip") -> LabelledRows:
    """Reads sentences and (unless `tags_column` is None, for prediction) their tags.

    Args:
        path: a CoNLL column file (`.txt`, `.conll`) or JSONL file.
        tokens_column, tags_column: JSONL keys of the word and tag lists (unused for CoNLL).
        bad_rows: "skip" drops JSONL rows with no words (with a warning), "error" stops on them.

    Raises:
        DataError: missing or empty file, unknown format, a CoNLL line with one column, a row whose
            words and tags differ in number, or a tag that is not BIO/BIOES-shaped; each names the
            file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(not_found(path) if not path.exists() else f"expected a data file but got a directory: {path}")
    suffix = path.suffix.lower()
    if suffix not in CONLL_SUFFIXES + JSONL_SUFFIXES:
        raise DataError(f"{path}: unknown format {suffix!r} for token classification; use a CoNLL column file "
                        "(.txt, .conll) or JSONL (.jsonl) with word and tag lists")
    labelled = tags_column is not None
    if suffix in CONLL_SUFFIXES:
        rows = _parse_conll(path, read_utf8(path), labelled)
    else:
        rows = _parse_jsonl(path, tokens_column, tags_column, bad_rows)
    if len(rows) == 0:
        raise DataError(f"{path}: no sentences found (the file is empty or holds only blank/-DOCSTART- lines)")
    if labelled:
        _log_iob1_starts(rows)
    return rows


def _parse_conll(path: Path, text: str, labelled: bool) -> LabelledRows:
    """Sentences of a column file: word in the first column, tag in the last."""
    sentences, tags, lines = [], [], []
    words: list[str] = []
    sentence_tags: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines() + [""], start=1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if words:
                sentences.append(words)
                tags.append(sentence_tags)
                lines.append(start)
            words, sentence_tags = [], []
            continue
        if labelled and len(columns) < 2:
            raise DataError(f"{path}, line {number}: one column ({line.strip()!r}); each line needs the word first "
                            "and its tag last, separated by spaces or tabs (a blank line ends a sentence)")
        if labelled:
            sentence_tags.append(check_tag(columns[-1], path, number))
        start = start if words else number
        words.append(columns[0])
    labels = tags if labelled else [[] for _ in sentences]
    return LabelledRows(source=str(path), inputs={TOKENS: sentences}, labels=labels, lines=lines)


def _parse_jsonl(path: Path, tokens_column: str, tags_column: str | None, bad_rows: str) -> LabelledRows:
    sentences, tags, lines, empty = [], [], [], []
    for number, row in jsonl_objects(path):
        words = _string_list(row, tokens_column, path, number, "token_classification.tokens_column")
        if not words:
            empty.append(number)
            continue
        if tags_column is not None:
            row_tags = _string_list(row, tags_column, path, number, "token_classification.tags_column")
            if len(row_tags) != len(words):
                raise DataError(f"{path}, line {number}: {len(words)} tokens but {len(row_tags)} tags; "
                                "every token needs exactly one tag")
            tags.append([check_tag(t, path, number) for t in row_tags])
        sentences.append(words)
        lines.append(number)
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        if bad_rows == "error":
            raise DataError(f"{path}: {len(empty)} rows with no tokens (lines {shown}); fix them or set data.bad_rows: skip")
        log.warning("%s: skipping %d rows with no tokens (lines %s)", path, len(empty), shown)
    labels = tags if tags_column is not None else [[] for _ in sentences]
    return LabelledRows(source=str(path), inputs={TOKENS: sentences}, labels=labels, lines=lines, skipped=len(empty))


def _string_list(row: dict, key: str, path: Path, number: int, setting: str) -> list[str]:
    if key not in row:
        found = ", ".join(repr(k) for k in row)
        raise DataError(f"{path}, line {number}: key {key!r} not found; keys are {found} (set {setting} to the right name)")
    value = row[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{path}, line {number}: {key!r} must be a list of strings (e.g. [\"B-PER\", \"O\"]), "
                        f"got {json.dumps(value)[:80]}")
    return value


def check_tag(tag: str, path: str | Path, line: int) -> str:
    """Returns `tag` if it is `O` or a BIO/BIOES tag; otherwise raises naming the line."""
    if not _TAG.match(tag):
        raise DataError(f"{path}, line {line}: tag {tag!r} is not a BIO/BIOES tag; tags are O or B-, I- (BIOES: "
                        "also E-, S-) followed by the entity type, e.g. B-PER, I-PER. Integer tag ids need "
                        "their names")
    return tag


def tag_scheme(rows: LabelledRows) -> str:
    """`BIOES` when any tag starts with E- or S-, else `BIO`."""
    return "BIOES" if any(t[:2] in ("E-", "S-") for tags in rows.labels for t in tags) else "BIO"


def _log_iob1_starts(rows: LabelledRows) -> None:
    """Counts entities opened by I- (IOB1 style); accepted, but worth knowing about."""
    starts, first = 0, None
    for tags, line in zip(rows.labels, rows.lines):
        previous = "O"
        for tag in tags:
            if tag.startswith("I-") and previous[2:] != tag[2:]:
                starts += 1
                first = first or line
            previous = tag
    if starts:
        log.info("%s: %d entities start with I- (IOB1 style, first in the sentence at line %d); read as entity starts",
                 rows.source, starts, first)


def tag_names(rows: LabelledRows) -> list[str]:
    """The tag vocabulary: `O` first, then by entity type and prefix (B, I, E, S).

    Raises:
        DataError: fewer than two distinct tags in the training data.
    """
    order = {"O": 0, "B": 1, "I": 2, "E": 3, "S": 4}
    names = sorted({t for tags in rows.labels for t in tags}, key=lambda t: (t != "O", t[2:], order[t[0]]))
    if len(names) < 2:
        raise DataError(f"{rows.source}: only one tag ({names[0]!r}) in the training data; tagging needs at least two")
    return names


def as_text_rows(rows: LabelledRows) -> LabelledRows:
    """The same sentences as space-joined text and tags, for checks that compare whole rows."""
    return LabelledRows(source=rows.source, inputs={"text": [" ".join(w) for w in rows.inputs[TOKENS]]},
                        labels=[" ".join(t) for t in rows.labels], lines=rows.lines)
