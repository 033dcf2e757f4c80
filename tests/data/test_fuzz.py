"""Property tests over every data reader: any file gives a correct parse or a tunesmith error with a
message, never another exception and never a hang. Well-formed files round-trip exactly."""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tunesmith.data.images import check_images, image_problem, open_rgb, read_images
from tunesmith.data.labelled import LabelledRows
from tunesmith.data.readers import read_table
from tunesmith.errors import TunesmithError

# No deadline: a loaded CI machine must not turn a slow example into a failure; behaviour is what is tested.
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Text a user's file may hold: any printable character, quotes, separators, accents, emoji, line breaks.
cell_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


def write(data: bytes, suffix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="tunesmith-fuzz-"))
    path = folder / f"data{suffix}"
    path.write_bytes(data)
    return path


def parse_or_clean_error(read, path: Path):
    """Returns what `read` gives, or None when it raised a tunesmith error with a message."""
    try:
        return read(path)
    except TunesmithError as exc:
        assert str(exc).strip(), "a tunesmith error needs a message"
        return None


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".json", ".parquet"]))
def test_any_bytes_give_a_table_of_strings_or_a_data_error(data, suffix):
    frame = parse_or_clean_error(read_table, write(data, suffix))
    if frame is not None:
        assert len(frame) > 0
        assert all(isinstance(v, str) for v in frame.to_numpy().ravel())


@FUZZ
@given(data=st.text(max_size=200), suffix=st.sampled_from([".csv", ".tsv", ".jsonl"]))
def test_any_text_gives_a_table_of_strings_or_a_data_error(data, suffix):
    frame = parse_or_clean_error(read_table, write(data.encode("utf-8", "surrogatepass"), suffix))
    if frame is not None:
        assert all(isinstance(v, str) for v in frame.to_numpy().ravel())


def table(columns: int):
    header = st.lists(cell_text.filter(lambda s: s.strip() == s and s), min_size=columns, max_size=columns,
                      unique=True)
    return st.tuples(header, st.lists(st.lists(cell_text, min_size=columns, max_size=columns), min_size=1, max_size=6))


@FUZZ
@given(content=st.integers(1, 3).flatmap(table))
def test_csv_written_by_the_csv_module_reads_back_cell_for_cell(content):
    header, rows = content
    frame = parse_or_clean_error(read_table, write(csv_text(header, rows).encode(), ".csv"))
    # A lone cell of spaces on its line is a blank line to the CSV parser (the line numbers stay right).
    kept = [i for i, row in enumerate(rows) if len(row) > 1 or not row[0] or row[0].strip(" \t")]
    if not kept:
        assert frame is None
        return
    assert frame is not None and list(frame.columns) == header
    assert frame.to_numpy().tolist() == [rows[i] for i in kept]
    # Each row is numbered by the file line it starts on, after quoted line breaks.
    assert list(frame.index) == [1 + len(re.findall(r"\r\n|\r|\n", csv_text(header, rows[:i]))) for i in kept]


def csv_text(header, rows) -> str:
    out = io.StringIO()
    csv.writer(out).writerows([header, *rows])
    return out.getvalue()


@FUZZ
@given(content=st.integers(1, 3).flatmap(table))
def test_jsonl_reads_back_cell_for_cell(content):
    header, rows = content
    text = "".join(json.dumps(dict(zip(header, row))) + "\n" for row in rows)
    frame = read_table(write(text.encode(), ".jsonl"))
    assert frame.to_numpy().tolist() == rows and list(frame.index) == list(range(1, len(rows) + 1))


@FUZZ
@given(content=st.integers(1, 3).flatmap(table))
def test_parquet_reads_back_cell_for_cell(content):
    header, rows = content
    path = write(b"", ".parquet")
    pd.DataFrame(rows, columns=header).to_parquet(path)
    assert read_table(path).to_numpy().tolist() == rows


@FUZZ
@given(content=st.integers(1, 3).flatmap(table))
def test_tsv_without_tabs_or_line_breaks_reads_back_cell_for_cell(content):
    header, rows = content
    clean = [[c.replace("\t", " ").replace("\n", " ").replace("\r", " ") for c in row] for row in rows]
    header = [c.replace("\t", " ").replace("\n", " ").replace("\r", " ").strip() or f"c{i}" for i, c in enumerate(header)]
    if len(set(header)) < len(header) or all(not "".join(row).strip(" ") for row in clean):
        return
    text = "\n".join("\t".join(row) for row in [header, *clean]) + "\n"
    frame = parse_or_clean_error(read_table, write(text.encode(), ".tsv"))
    assert frame is not None
    assert frame.to_numpy().tolist() == [row for row in clean if "".join(row).strip(" ") or len(header) > 1]


# ---- images ---------------------------------------------------------------------------------

def small_image(seed: int, fmt: str) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def usable_means_decodable(path: Path) -> None:
    """The preflight's promise: an image it passes decodes in the data loader."""
    problem = image_problem(str(path))
    assert problem is None or isinstance(problem, str) and problem
    if problem is None:
        assert open_rgb(path).mode == "RGB"


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".webp", ".tif"]))
def test_random_bytes_named_as_images(data, suffix):
    usable_means_decodable(write(data, suffix))


@FUZZ
@given(fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"]), seed=st.integers(0, 3), cut=st.floats(0, 1))
def test_truncated_real_images(fmt, seed, cut):
    data = small_image(seed, fmt)
    usable_means_decodable(write(data[: int(len(data) * cut)], f".{fmt.lower()}"))


@FUZZ
@given(fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF"]), seed=st.integers(0, 3),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4))
def test_real_images_with_corrupted_bytes(fmt, seed, flips):
    data = bytearray(small_image(seed, fmt))
    for where, value in flips:
        data[int(where * len(data))] = value
    usable_means_decodable(write(bytes(data), f".{fmt.lower()}"))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(st.binary(max_size=200), min_size=1, max_size=4))
def test_the_image_preflight_drops_or_names_every_bad_file(files):
    folder = Path(tempfile.mkdtemp(prefix="tunesmith-fuzz-"))
    (folder / "cat").mkdir()
    for i, data in enumerate(files):
        (folder / "cat" / f"{i}.png").write_bytes(data)
    rows = read_images(folder, "image", "label", None, "skip")
    try:
        kept, bad = check_images(rows, "image", "skip")
    except TunesmithError as exc:
        assert "none of the" in str(exc)
        return
    assert len(kept) + len(bad) == len(files)
    assert all(open_rgb(p).mode == "RGB" for p in kept.inputs["image"])


# ---- CoNLL and tagged JSONL (token classification) ------------------------------------------

sequences = pytest.importorskip("tunesmith.data.sequences")


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".conll", ".txt", ".jsonl"]),
       labelled=st.booleans())
def test_any_bytes_give_tagged_sentences_or_a_data_error(data, suffix, labelled):
    rows = parse_or_clean_error(lambda p: sequences.read_tagged(p, tags_column="tags" if labelled else None),
                                write(data, suffix))
    if rows is not None:
        assert_tagged(rows, labelled)


@FUZZ
@given(data=st.text(st.sampled_from(list("abcXYZ -_\t\nBIESO")), max_size=200), labelled=st.booleans())
def test_conll_like_text_gives_tagged_sentences_or_a_data_error(data, labelled):
    rows = parse_or_clean_error(lambda p: sequences.read_tagged(p, tags_column="tags" if labelled else None),
                                write(data.encode(), ".conll"))
    if rows is not None:
        assert_tagged(rows, labelled)


tag = st.one_of(st.just("O"), st.tuples(st.sampled_from("BIES"), st.sampled_from(["PER", "LOC", "MISC"])).map("-".join))
word = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Cc", "Zl", "Zp")), min_size=1, max_size=6)


@FUZZ
@given(sentences=st.lists(st.lists(st.tuples(word, tag), min_size=1, max_size=5), min_size=1, max_size=4))
def test_well_formed_conll_reads_back_word_for_word(sentences):
    text = "-DOCSTART- -X- O\n\n" + "\n\n".join("\n".join(f"{w} NN {t}" for w, t in s) for s in sentences) + "\n"
    try:
        rows = sequences.read_tagged(write(text.encode(), ".conll"))
    except TunesmithError as exc:
        pytest.fail(f"a well-formed file was refused: {exc}")
    if any(w == "-DOCSTART-" for s in sentences for w, _ in s):
        return
    assert rows.inputs["tokens"] == [[w for w, _ in s] for s in sentences]
    assert rows.labels == [[t for _, t in s] for s in sentences]


def assert_tagged(rows: LabelledRows, labelled: bool) -> None:
    assert len(rows) > 0
    for words, tags in zip(rows.inputs["tokens"], rows.labels):
        assert words and all(isinstance(w, str) and w for w in words)
        assert len(tags) == (len(words) if labelled else 0)


# ---- SQuAD JSON and JSONL (question answering) ----------------------------------------------

squad = pytest.importorskip("tunesmith.data.squad")
QA_COLUMNS = {"id": "id", "question": "question", "context": "context", "answers": "answers"}
json_value = st.recursive(st.none() | st.booleans() | st.integers(-3, 40) | cell_text,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                              st.sampled_from(["text", "answer_start", "data", "paragraphs", "qas", "context",
                                               "question", "answers", "id", "is_impossible"]), inner, max_size=4),
                          max_leaves=12)


def read_qa(path: Path, labelled: bool):
    return squad.read_squad(path, QA_COLUMNS, labelled)


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".json", ".jsonl"]), labelled=st.booleans())
def test_any_bytes_give_questions_or_a_data_error(data, suffix, labelled):
    rows = parse_or_clean_error(lambda p: read_qa(p, labelled), write(data, suffix))
    if rows is not None:
        assert_questions(rows)


@FUZZ
@given(records=st.lists(st.dictionaries(st.sampled_from(["question", "context", "answers", "id"]), json_value,
                                        max_size=4), min_size=1, max_size=4),
       nested=st.booleans(), labelled=st.booleans())
def test_squad_shaped_json_gives_questions_or_a_data_error(records, nested, labelled):
    if nested:
        text = json.dumps({"data": [{"paragraphs": [{"context": r.get("context"), "qas": [r]} for r in records]}]})
    else:
        text = "\n".join(json.dumps(r) for r in records)
    rows = parse_or_clean_error(lambda p: read_qa(p, labelled), write(text.encode(), ".json" if nested else ".jsonl"))
    if rows is not None:
        assert_questions(rows)


def assert_questions(rows: LabelledRows) -> None:
    """Every kept question has text and context, and every answer is where it says in the context."""
    assert len(rows) > 0
    for question, context, answers in zip(rows.inputs["question"], rows.inputs["context"], rows.labels):
        assert question.strip() and context.strip()
        assert len(answers["text"]) == len(answers["answer_start"])
        for text, start in zip(answers["text"], answers["answer_start"]):
            assert context[start:start + len(text)] == text


@FUZZ
@given(items=st.lists(st.tuples(cell_text.filter(str.strip), cell_text.filter(str.strip), st.integers(0, 11),
                                st.integers(1, 6)), min_size=1, max_size=4))
def test_well_formed_squad_jsonl_reads_back_answer_for_answer(items):
    records = []
    for question, context, start, length in items:
        start = min(start, len(context) - 1)
        text = context[start:start + length]
        answers = {"text": [text], "answer_start": [start]} if text.strip() else {"text": [], "answer_start": []}
        records.append({"question": question, "context": context, "answers": answers})
    try:
        rows = read_qa(write("\n".join(json.dumps(r) for r in records).encode(), ".jsonl"), True)
    except TunesmithError as exc:
        pytest.fail(f"a well-formed file was refused: {exc}")
    assert rows.inputs["question"] == [r["question"] for r in records]
    assert rows.labels == [r["answers"] for r in records]
