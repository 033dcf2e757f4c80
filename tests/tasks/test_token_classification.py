"""Token classification: CoNLL/JSONL reading, sub-word tag alignment, entity metrics, and a real
fine-tune of demo:minilm on a slice of CoNLL-2003 (skipped without ../shared/data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tunesmith.config import load_config
from tunesmith.data.labelled import random_split
from tunesmith.data.sequences import read_tagged, tag_names, tag_scheme
from tunesmith.errors import ConfigError, DataError
from tunesmith.report.entity_metrics import entity_metrics, entity_spans

CONLL = """-DOCSTART- -X- O

EU NNP B-ORG
rejects VBZ O
German JJ B-MISC
call NN O

Peter NNP B-PER
Blackburn NNP I-PER

"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---- reading ------------------------------------------------------------------------------------


def test_conll_sentences_skip_docstart_and_keep_first_line(tmp_path):
    rows = read_tagged(write(tmp_path, "train.txt", CONLL))
    assert rows.inputs["tokens"] == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]]
    assert rows.labels == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"]]
    assert rows.lines == [3, 8]
    assert tag_names(rows) == ["O", "B-MISC", "B-ORG", "B-PER", "I-PER"]
    assert tag_scheme(rows) == "BIO"


def test_conll_without_trailing_blank_line_and_tabs(tmp_path):
    rows = read_tagged(write(tmp_path, "a.conll", "Paris\tS-LOC\nis\tO"))
    assert rows.inputs["tokens"] == [["Paris", "is"]]
    assert tag_scheme(rows) == "BIOES"


def test_jsonl_with_configured_keys(tmp_path):
    path = write(tmp_path, "d.jsonl", json.dumps({"words": ["Ann", "sings"], "ner": ["B-PER", "O"]}) + "\n\n"
                 + json.dumps({"words": [], "ner": []}) + "\n")
    rows = read_tagged(path, tokens_column="words", tags_column="ner")
    assert rows.inputs["tokens"] == [["Ann", "sings"]] and rows.labels == [["B-PER", "O"]]
    assert rows.lines == [1] and rows.skipped == 1
    with pytest.raises(DataError, match=r"d.jsonl: 1 rows with no tokens \(lines 3\)"):
        read_tagged(path, tokens_column="words", tags_column="ner", bad_rows="error")


def test_unlabelled_files_need_no_tags(tmp_path):
    rows = read_tagged(write(tmp_path, "p.txt", "Ann\nsings\n\nBob\n"), tags_column=None)
    assert rows.inputs["tokens"] == [["Ann", "sings"], ["Bob"]] and len(rows) == 2


@pytest.mark.parametrize(("name", "text", "message"), [
    ("one.txt", "EU B-ORG\nrejects\n", r"one.txt, line 2: one column \('rejects'\)"),
    ("bad.txt", "EU NNP B-ORG\nrejects VBZ PER\n", r"bad.txt, line 2: tag 'PER' is not a BIO/BIOES tag"),
    ("lower.txt", "EU b-org\n", r"lower.txt, line 1: tag 'b-org'"),
    ("empty.txt", "", r"empty.txt: no sentences found"),
    ("docs.txt", "-DOCSTART- -X- O\n\n", r"docs.txt: no sentences found"),
    ("len.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n',
     r"len.jsonl, line 2: 2 tokens but 1 tags"),
    ("key.jsonl", '{"words": ["a"], "tags": ["O"]}\n', r"key.jsonl, line 1: key 'tokens' not found; keys are 'words'"),
    ("ids.jsonl", '{"tokens": ["a"], "tags": [3]}\n', r"ids.jsonl, line 1: 'tags' must be a list of strings"),
    ("json.jsonl", '{"tokens": \n', r"json.jsonl, line 1: not valid JSON"),
    ("data.csv", "a,b\n", r"data.csv: unknown format '.csv'"),
])
def test_bad_files_name_the_file_and_line(tmp_path, name, text, message):
    with pytest.raises(DataError, match=message):
        read_tagged(write(tmp_path, name, text))


def test_iob1_starts_are_accepted(tmp_path):
    rows = read_tagged(write(tmp_path, "iob1.txt", "EU I-ORG\nrejects O\n"))
    assert rows.labels == [["I-ORG", "O"]]


def test_random_split_is_seeded_and_disjoint(tmp_path):
    text = "".join(f"w{i} O\nx B-PER\n\n" for i in range(20))
    rows = read_tagged(write(tmp_path, "t.txt", text))
    train, val = random_split(rows, 0.25, seed=1)
    assert (len(train), len(val)) == (15, 5)
    assert not set(train.lines) & set(val.lines)
    assert random_split(rows, 0.25, seed=1)[1].lines == val.lines


# ---- config -------------------------------------------------------------------------------------


def test_entity_f1_is_the_default_metric_for_tagging():
    assert load_config({"task": "token-classification"}).training.metric_for_best_model == "f1"
    assert load_config({}).training.metric_for_best_model == "accuracy"
    with pytest.raises(ConfigError, match="unknown metric 'f1' for text-classification; choose one of accuracy, macro_f1, roc_auc, loss"):
        load_config({"training": {"metric_for_best_model": "f1"}})


# ---- alignment with the real MiniLM tokenizer ---------------------------------------------------


@pytest.fixture(scope="module")
def task():
    from transformers import AutoTokenizer

    from tunesmith.models.sources import resolve_source
    from tunesmith.tasks import get_task

    t = get_task(load_config({"task": "token-classification", "data": {"max_length": 16}}))
    t.tokenizer = AutoTokenizer.from_pretrained(resolve_source("demo:minilm").location)
    t.label_names = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    return t


def rows_of(words, tags):
    from tunesmith.data.labelled import LabelledRows

    return LabelledRows("mem", {"tokens": [words]}, [tags], [1])


def test_first_subtoken_gets_the_tag_others_are_ignored(task):
    words, tags = ["Schwarzenegger", "visited", "Kathmandu"], ["B-PER", "O", "B-LOC"]
    feature = task.dataset(rows_of(words, tags), train=True)[0]
    pieces = task.tokenizer.convert_ids_to_tokens(feature["input_ids"])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and len(pieces) > len(words) + 2  # words were split
    expected, seen = [], set()
    for word in task.tokenizer(words, is_split_into_words=True).word_ids():
        expected.append(-100 if word is None or word in seen else task.label_names.index(tags[word]))
        seen.add(word)
    assert feature["labels"] == expected
    assert [lab for lab in feature["labels"] if lab != -100] == [3, 0, 1]
    assert "subtoken_labels" not in feature


def test_label_all_subtokens_continues_b_as_i(task):
    task.config.token_classification.label_all_subtokens = True
    try:
        feature = task.dataset(rows_of(["Schwarzenegger"], ["B-PER"]), train=True)[0]
    finally:
        task.config.token_classification.label_all_subtokens = False
    inner = feature["subtoken_labels"][1:-1]
    assert inner[0] == 3 and set(inner[1:]) == {4} and feature["subtoken_labels"][0] == -100


def test_truncation_is_counted_and_batches_pad_labels_to_max_length(task):
    before = task.truncated
    data = task.dataset(rows_of(["word"] * 30, ["O"] * 30), train=False)
    assert task.truncated == before + 1 and len(data[0]["input_ids"]) == 16
    batch = task.collate(data + task.dataset(rows_of(["Ann"], ["B-PER"]), train=False))
    assert batch["input_ids"].shape == (2, 16) and batch["labels"].shape == (2, 16)
    assert batch["labels"][1].tolist()[:3] == [-100, 3, -100] and batch["attention_mask"][1].sum() == 3


# ---- metrics and spans --------------------------------------------------------------------------


def test_entity_metrics_match_a_hand_computed_case():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    m = entity_metrics(true, pred)
    # true entities PER, LOC, ORG; predicted PER, ORG, LOC(wrong span): 2 of 3 right either way
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_class"]["PER"]["f1"] == 1.0 and m["macro_f1"] == pytest.approx(2 / 3)


def test_metrics_score_each_word_the_model_saw_by_its_first_subtoken(task):
    import torch

    words = ["John", "lives", "in", "Paris"] + ["and", "works", "in", "Berlin"] * 3  # longer than max_length 16
    tags = ["B-PER", "O", "O", "B-LOC"] + ["O", "O", "O", "B-LOC"] * 3
    rows = rows_of(words, tags)
    feature = task.dataset(rows, train=False)[0]
    logits = np.zeros((1, len(feature["input_ids"]) + 3, 5), dtype=np.float32)  # 3 padding positions
    logits[0, :, task.label_names.index("I-PER")] = 1.0  # every sub-token and pad says I-PER ...
    for position, label in enumerate(feature["labels"]):
        if label != -100:  # ... but each word's first sub-token says its true tag
            logits[0, position] = 0.0
            logits[0, position, label] = 2.0
    mask = torch.tensor([[1] * len(feature["input_ids"]) + [0] * 3])
    [example] = task.batch_outputs(torch.from_numpy(logits), {"attention_mask": mask})
    assert example.shape == (len(feature["input_ids"]), 5)  # padding dropped
    [per_word] = task.row_outputs(rows, [example])
    seen = ~np.isnan(per_word[:, 0])
    assert per_word.shape == (len(words), 5) and seen[:4].all() and not seen.all()  # the last words were cut off
    m = task.metrics(rows, [per_word])
    assert m["f1"] == 1.0 and m["accuracy"] == 1.0
    record = task.predictions(rows, [per_word])[0]
    assert record["tags"][:4] == tags[:4] and record["tags"][-1] == "O" and record["scores"][-1] is None


def test_entity_spans_have_character_offsets():
    words = ["John", "lives", "in", "New", "York"]
    spans = entity_spans(words, ["B-PER", "O", "O", "B-LOC", "I-LOC"])
    assert spans == [{"type": "PER", "start": 0, "end": 4, "text": "John", "words": [0, 1]},
                     {"type": "LOC", "start": 14, "end": 22, "text": "New York", "words": [3, 5]}]
    assert entity_spans(["Paris"], ["S-LOC"])[0]["text"] == "Paris"


# ---- end to end on CoNLL-2003 -------------------------------------------------------------------


def conll_slice(source: Path, target: Path, sentences: int) -> Path:
    blocks = [b for b in source.read_text(encoding="utf-8").split("\n\n") if b.strip()][:sentences]
    target.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return target


def test_minilm_learns_conll_entities(shared_data, tmp_path):
    """demo:minilm on 500 CoNLL-2003 sentences (embeddings frozen, layer-wise decayed rates)."""
    from transformers import AutoModelForTokenClassification

    from tunesmith.run import evaluate, finetune, predict

    conll = shared_data / "conll2003"
    train = conll_slice(conll / "train.txt", tmp_path / "train.txt", 500)
    dev = conll_slice(conll / "dev.txt", tmp_path / "dev.txt", 120)
    result = finetune({
        "task": "token-classification", "output_dir": str(tmp_path / "run"),
        "data": {"train": str(train), "validation": str(dev), "max_length": 64},
        "training": {"num_train_epochs": 3, "learning_rate": 3e-4, "per_device_train_batch_size": 16},
        "strategy": {"freeze": 1, "layer_lr_decay": 0.9},
    }, quiet=True)
    assert result.final["f1"] > result.baseline["f1"] + 0.4, (result.baseline["f1"], result.final["f1"])
    assert result.final["f1"] > 0.5 and result.final["accuracy"] > 0.9

    model = AutoModelForTokenClassification.from_pretrained(result.best_model_dir)
    assert model.config.id2label[0] == "O" and "B-PER" in model.config.label2id

    scores = evaluate(str(result.best_model_dir), str(dev))
    assert scores["f1"] == pytest.approx(result.final["f1"], abs=1e-6)

    out = predict(str(result.run_dir), str(dev), str(tmp_path / "pred.jsonl"))
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 120 and sum(len(r["entities"]) for r in records) > 50
    for r in records:
        assert r["text"] == " ".join(r["tokens"]) and len(r["tags"]) == len(r["tokens"])
        for span in r["entities"]:
            first, end = span["words"]
            assert r["text"][span["start"]:span["end"]] == span["text"] == " ".join(r["tokens"][first:end])


def contract_case(request, make) -> dict:
    """The task contract's case (tests/tasks/test_contract.py): a tiny BERT tagging one word."""
    rows = []
    for _ in range(24):
        tokens = make.words(int(make.rng.integers(2, 9)))
        rows.append({"tokens": tokens, "tags": ["B-X" if t == "river" else "O" for t in tokens]})
    return {"model": {"source": str(request.getfixturevalue("tiny_bert"))}, "data": {"train": make.jsonl(rows)}}


def test_a_multi_megabyte_sentence_is_cut_by_characters_before_tokenizing_and_counted(task, recording_tokenizer):
    from tunesmith.data.labelled import LabelledRows
    from tunesmith.data.text_limits import char_limit

    task.truncated, real = 0, task.tokenizer
    task.tokenizer = recording_tokenizer(real)
    try:
        one_word = "x" * 3_000_000  # one 3 MB "word"
        many = ["Paris"] * 600_000  # 3.6 MB of words
        rows = LabelledRows("mem", {"tokens": [[one_word], many, ["Paris"]]},
                            [["O"], ["B-LOC"] * len(many), ["B-LOC"]], [1, 2, 3])
        features = task.dataset(rows, train=True)
        assert task.tokenizer.most_chars <= 3 * char_limit(task.max_length) < len(one_word) // 100
        assert task.truncated == 2 and len(features) == 3
        assert features[1]["labels"][1:3] == [1, 1]  # the kept words keep their tags
    finally:
        task.tokenizer = real
