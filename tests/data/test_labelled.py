"""Labelled rows: column checks, bad rows, stratified splits, label vocabulary."""

from __future__ import annotations

from collections import Counter

import pytest

from tunesmith.data.labelled import check_known_labels, label_names_of, load_labelled, stratified_split
from tunesmith.errors import DataError


def csv_file(tmp_path, text: str, name: str = "d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_missing_column_lists_the_columns_found(tmp_path):
    path = csv_file(tmp_path, "sentence,label\nhi,1\n")
    with pytest.raises(DataError, match="column 'text' not found; columns are 'sentence', 'label'"):
        load_labelled(path, ["text"], "label", "skip")


def test_bad_rows_are_skipped_with_a_count(tmp_path, caplog):
    path = csv_file(tmp_path, "text,label\ngood,1\n,0\nfine,\nok,0\n")
    rows = load_labelled(path, ["text"], "label", "skip")
    assert rows.labels == ["1", "0"] and rows.skipped == 2
    assert rows.lines == [2, 5]
    assert "skipping 2 rows" in caplog.text and "lines 3, 4" in caplog.text


def test_bad_rows_fail_under_error(tmp_path):
    path = csv_file(tmp_path, "text,label\ngood,1\n   ,0\n")
    with pytest.raises(DataError, match=r"1 rows with empty text \(lines 3\)"):
        load_labelled(path, ["text"], "label", "error")


def test_all_rows_bad(tmp_path):
    path = csv_file(tmp_path, "text,label\n,1\n,0\n")
    with pytest.raises(DataError, match="no usable rows"):
        load_labelled(path, ["text"], "label", "skip")


def test_stratified_split_is_seeded_and_keeps_proportions(reviews):
    rows = load_labelled(reviews, ["text"], "label", "skip")
    train, val = stratified_split(rows, 0.2, seed=1)
    again, _ = stratified_split(rows, 0.2, seed=1)
    assert train.lines == again.lines
    assert len(val) == 120 and Counter(val.labels) == {"positive": 60, "negative": 60}
    assert not set(train.lines) & set(val.lines)


def test_split_refuses_a_single_row_class(tmp_path):
    path = csv_file(tmp_path, "text,label\n" + "".join(f"t{i},a\n" for i in range(10)) + "lonely,b\n")
    with pytest.raises(DataError, match=r"labels \['b'\] have a single row"):
        stratified_split(load_labelled(path, ["text"], "label", "skip"), 0.2, 0)


def test_unseen_validation_labels_are_named_with_lines(tmp_path):
    path = csv_file(tmp_path, "text,label\na,pos\nb,neutral\nc,neg\n")
    rows = load_labelled(path, ["text"], "label", "skip")
    with pytest.raises(DataError, match=r"labels not seen in training: 'neutral' \(lines 3\)"):
        check_known_labels(rows, ["neg", "pos"])


def test_integer_labels_sort_numerically(tmp_path):
    path = csv_file(tmp_path, "text,label\na,10\nb,2\nc,1\n")
    assert label_names_of(load_labelled(path, ["text"], "label", "skip")) == ["1", "2", "10"]


def test_single_label_is_refused(tmp_path):
    path = csv_file(tmp_path, "text,label\na,x\nb,x\n")
    with pytest.raises(DataError, match="only one label"):
        label_names_of(load_labelled(path, ["text"], "label", "skip"))


def test_duplicates_and_validation_leaks_are_counted(tmp_path, caplog):
    from tunesmith.data.labelled import duplicates_and_leaks

    train = load_labelled(csv_file(tmp_path, "text,label\na,x\na,y\nb,x\nc,y\n", "t.csv"), ["text"], "label", "skip")
    val = load_labelled(csv_file(tmp_path, "text,label\nb,x\nd,y\n", "v.csv"), ["text"], "label", "skip")
    counts = duplicates_and_leaks(train, val)
    assert counts == {"train_duplicates": 1, "train_conflicting_duplicates": 1, "validation_rows_in_train": 1}
    assert "1 validation rows also occur in the training data (lines 2)" in caplog.text


def test_the_duplicate_warning_names_the_lines(tmp_path, caplog):
    from tunesmith.data.labelled import duplicates_and_leaks

    train = load_labelled(csv_file(tmp_path, "text,label\na,x\nb,y\na,x\nc,y\nb,x\n", "t.csv"), ["text"], "label", "skip")
    val = load_labelled(csv_file(tmp_path, "text,label\nd,x\n", "v.csv"), ["text"], "label", "skip")
    duplicates_and_leaks(train, val)
    assert "2 rows repeat an earlier row's input (1 of them with a different label) (line 4 repeats 2, 6 repeats 3)" \
        in caplog.text


def imbalanced_rows(n_a: int = 60, n_b: int = 20):
    from tunesmith.data.labelled import LabelledRows

    labels = ["a"] * n_a + ["b"] * n_b
    return LabelledRows("mem", {"text": [f"row {i}" for i in range(len(labels))]}, labels, list(range(2, len(labels) + 2)))


def test_learning_curve_fractions_are_nested_and_stratified():
    from tunesmith.data.labelled import nested_fractions

    rows = imbalanced_rows()
    subsets = nested_fractions(rows, [1.0, 0.1, 0.25, 0.5], seed=7)
    assert list(subsets) == [0.1, 0.25, 0.5, 1.0]
    texts = [set(s.inputs["text"]) for s in subsets.values()]
    assert all(small < large for small, large in zip(texts, texts[1:]))  # strictly nested
    assert [Counter(s.labels) for s in subsets.values()] == [
        {"a": 6, "b": 2}, {"a": 15, "b": 5}, {"a": 30, "b": 10}, {"a": 60, "b": 20}]  # 3:1 kept
    assert subsets[1.0].inputs == rows.inputs  # all rows, in file order
    lines = subsets[0.25].lines
    assert lines == sorted(lines) and all(rows.lines[rows.inputs["text"].index(t)] == n
                                          for t, n in zip(subsets[0.25].inputs["text"], lines))


def test_learning_curve_fractions_depend_on_the_seed_and_keep_every_label():
    from tunesmith.data.labelled import nested_fractions

    rows = imbalanced_rows(60, 3)
    first, again, other = (nested_fractions(rows, [0.1], seed) for seed in (1, 1, 2))
    assert first[0.1].inputs == again[0.1].inputs and first[0.1].inputs != other[0.1].inputs
    assert Counter(first[0.1].labels) == {"a": 6, "b": 1}  # a rare label keeps at least one row


def test_learning_curve_fractions_outside_zero_one_are_refused():
    from tunesmith.data.labelled import nested_fractions

    with pytest.raises(DataError, match=r"fractions must be in \(0, 1\], got \[1.5, 0\]"):
        nested_fractions(imbalanced_rows(), [0.5, 1.5, 0], seed=0)


def test_rows_written_as_jsonl_read_back_the_same(tmp_path):
    from tunesmith.data.labelled import write_jsonl

    rows = load_labelled(csv_file(tmp_path, 'text,label\n"a, quoted ""x""",pos\nünïcode,neg\n'), ["text"], "label", "skip")
    again = load_labelled(write_jsonl(rows, "label", tmp_path / "sub" / "rows.jsonl"), ["text"], "label", "skip")
    assert again.inputs == rows.inputs and again.labels == rows.labels


@pytest.mark.parametrize("value, kind", [(["word"] * 2000, "list<element: string>"), ({"a": 1}, "struct<a: int64>"),
                                         (b"\x89PNG", "binary")])
def test_parquet_cells_that_are_not_text_are_refused(tmp_path, value, kind):
    import pandas as pd

    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": [None, value, value], "label": ["a", "b", "a"], "extra": [value] * 3}).to_parquet(path)
    with pytest.raises(DataError, match=rf"d.parquet: column 'text' does not hold text or numbers: its Parquet type is "
                                        rf"{kind} \(first value in row 2\)"):
        load_labelled(path, ["text"], "label", "skip")
    pd.DataFrame({"text": ["x", "y"], "label": ["a", "b"], "extra": [value] * 2}).to_parquet(path)
    assert load_labelled(path, ["text"], "label", "skip").inputs["text"] == ["x", "y"]  # unused columns may hold anything


def test_jsonl_cells_that_are_not_text_are_refused(tmp_path):
    path = csv_file(tmp_path, '{"text": "fine", "label": "a"}\n{"text": "ok", "label": ["a", "b"]}\n', "d.jsonl")
    with pytest.raises(DataError, match=r"d.jsonl: column 'label' does not hold text or numbers: line 2 holds a JSON "
                                        r'list \(\["a", "b"\]\)'):
        load_labelled(path, ["text"], "label", "skip")
    path.write_text('{"text": {"body": "hi"}, "label": 1}\n')
    with pytest.raises(DataError, match=r"column 'text' .*line 1 holds a JSON object"):
        load_labelled(path, ["text"], "label", "skip")
