"""Extractive question answering: SQuAD JSON/JSONL reading, windows and answer spans, SQuAD metrics,
answer picking with unanswerable questions, and a run on a tiny BERT (plus demo:minilm on a slice of
SQuAD, skipped without ../shared/data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tunesmith.config import load_config
from tunesmith.data.labelled import LabelledRows
from tunesmith.data.squad import read_squad
from tunesmith.errors import ConfigError, DataError
from tunesmith.report.qa_metrics import normalize_answer, squad_metrics, token_f1

COLUMNS = {"id": "id", "question": "question", "context": "context", "answers": "answers"}
CONTEXT = "The Eiffel Tower was completed in 1889 in Paris. It was designed by the firm of Gustave Eiffel."


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def qa(question: str, answers, **extra) -> dict:
    return {"question": question, "context": CONTEXT, "answers": answers, **extra}


# ---- reading ------------------------------------------------------------------------------------


def test_jsonl_in_both_answer_layouts_and_without_answer_start(tmp_path):
    path = write(tmp_path, "q.jsonl", jsonl(
        qa("When?", {"text": ["1889", "in 1889"], "answer_start": [34, 31]}, id="a"),
        qa("Where?", [{"text": "Paris", "answer_start": 42}]),
        qa("Who?", {"text": ["Gustave Eiffel"]}),
        qa("How tall?", {"text": [], "answer_start": []})))
    rows = read_squad(path, COLUMNS)
    assert rows.inputs["id"] == ["a", "2", "3", "4"] and rows.lines == [1, 2, 3, 4]
    assert rows.labels[0] == {"text": ["1889", "in 1889"], "answer_start": [34, 31]}
    assert rows.labels[1] == {"text": ["Paris"], "answer_start": [42]}
    assert rows.labels[2] == {"text": ["Gustave Eiffel"], "answer_start": [CONTEXT.index("Gustave")]}
    assert rows.labels[3] == {"text": [], "answer_start": []}


def test_official_squad_json_with_unanswerable_questions(tmp_path):
    document = {"version": "v2.0", "data": [{"title": "Tower", "paragraphs": [{"context": CONTEXT, "qas": [
        {"id": "q1", "question": "When?", "answers": [{"text": "1889", "answer_start": 34}]},
        {"id": "q2", "question": "How tall?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "1889", "answer_start": 34}]}]}]}]}
    rows = read_squad(write(tmp_path, "dev.json", json.dumps(document)), COLUMNS)
    assert rows.inputs["id"] == ["q1", "q2"] and rows.inputs["context"] == [CONTEXT, CONTEXT]
    assert [a["text"] for a in rows.labels] == [["1889"], []]


def test_configured_keys_and_unlabelled_files(tmp_path):
    path = write(tmp_path, "p.jsonl", jsonl({"q": "When?", "passage": CONTEXT}))
    rows = read_squad(path, {**COLUMNS, "question": "q", "context": "passage"}, labelled=False)
    assert rows.inputs["question"] == ["When?"] and rows.labels == [{"text": [], "answer_start": []}]
    with pytest.raises(DataError, match=r"p.jsonl, line 1: key 'answers' not found; keys are 'q', 'passage'"):
        read_squad(path, {**COLUMNS, "question": "q", "context": "passage"})


def test_misplaced_answers_are_skipped_or_named(tmp_path):
    path = write(tmp_path, "bad.jsonl", jsonl(qa("When?", {"text": ["1889"], "answer_start": [33]}),
                                              qa("Where?", {"text": ["Paris"], "answer_start": [42]})))
    rows = read_squad(path, COLUMNS)
    assert rows.inputs["question"] == ["Where?"] and rows.skipped == 1
    with pytest.raises(DataError, match=r"bad.jsonl, line 1: answer '1889' is not in the context at answer_start 33"):
        read_squad(path, COLUMNS, bad_rows="error")


@pytest.mark.parametrize(("name", "text", "message"), [
    ("key.jsonl", jsonl({"query": "When?", "context": CONTEXT}), r"key.jsonl, line 1: key 'question' not found"),
    ("none.jsonl", jsonl(qa("When?", {"text": ["Rome"]})), r"none.jsonl: no usable questions found \(1 bad rows"),
    ("start.jsonl", jsonl(qa("When?", {"text": ["1889"], "answer_start": ["34"]})), r"no usable questions"),
    ("flat.json", jsonl(qa("When?", []), qa("Where?", [])), r"flat.json: not valid JSON \(Extra data at line 2\)"),
    ("list.json", json.dumps([qa("When?", [])]), r'list.json: expected the SQuAD layout, an object with a "data" list'),
    ("deep.json", json.dumps({"data": [{"title": "x"}]}), r"deep.json: every article needs a 'paragraphs' list"),
    ("q.csv", "question,context\n", r"q.csv: unknown format '.csv'"),
])
def test_bad_files_name_the_file_and_what_to_do(tmp_path, name, text, message):
    with pytest.raises(DataError, match=message):
        read_squad(write(tmp_path, name, text), COLUMNS)


def test_config_defaults_for_question_answering():
    config = load_config({"task": "question-answering"})
    assert config.training.metric_for_best_model == "f1" and config.data.max_length == 384
    assert load_config({"task": "question-answering", "data": {"max_length": 256}}).data.max_length == 256
    assert load_config({}).data.max_length == 128
    with pytest.raises(ConfigError, match="unknown metric 'accuracy' for question-answering; choose one of f1, exact_match, loss"):
        load_config({"task": "question-answering", "training": {"metric_for_best_model": "accuracy"}})


# ---- metrics ------------------------------------------------------------------------------------


def test_squad_normalization_and_f1_match_hand_computed_cases():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple and a pear") == "apple and pear"
    assert token_f1("the big cat", "a cat sat") == pytest.approx(0.5)  # [big, cat] vs [cat, sat]: P = R = 1/2
    assert token_f1("cat cat", "cat") == pytest.approx(2 / 3)  # P = 1/2, R = 1
    assert token_f1("", "") == 1.0 and token_f1("cat", "") == 0.0


def test_squad_metrics_take_the_best_gold_answer_and_score_abstentions():
    m = squad_metrics(["in 1889", "Paris France", "", "1889"], [["1889", "in 1889"], ["Paris"], [], []])
    # EM: 1, 0, 1 (abstained on unanswerable), 0;  F1: 1, 2/3, 1, 0
    assert m["exact_match"] == pytest.approx(2 / 4) and m["f1"] == pytest.approx((1 + 2 / 3 + 1) / 4)
    assert m["has_answer_f1"] == pytest.approx((1 + 2 / 3) / 2) and m["no_answer_accuracy"] == 0.5
    assert set(squad_metrics(["a"], [["a"]])) == {"exact_match", "f1"}


# ---- windows, labels and answers with the real MiniLM tokenizer ---------------------------------


@pytest.fixture
def task():
    from transformers import AutoTokenizer

    from tunesmith.models.sources import resolve_source
    from tunesmith.tasks import get_task

    t = get_task(load_config({"task": "question-answering", "data": {"max_length": 20},
                              "question_answering": {"doc_stride": 4}}))
    t.tokenizer = AutoTokenizer.from_pretrained(resolve_source("demo:minilm").location)
    return t


def rows_of(*labels: dict) -> LabelledRows:
    n = len(labels)
    return LabelledRows("mem", {"id": [str(i) for i in range(n)], "question": ["Who designed it?"] * n,
                                "context": [CONTEXT] * n}, list(labels), list(range(1, n + 1)))


def decoded(task, rows: LabelledRows) -> list[tuple[int, str]]:
    """(row, context text between the labelled tokens) of every window that holds an answer."""
    windows = task.windows(rows)
    spans = []
    for feature, offsets, row in zip(windows.features, windows.offsets, windows.row_of):
        start, end = feature["labels"]
        if start:
            spans.append((row, rows.inputs["context"][row][offsets[start][0]:offsets[end][1]]))
    return spans


def test_long_contexts_are_windowed_and_answers_labelled_where_whole(task):
    start = CONTEXT.index("Gustave")
    rows = rows_of({"text": ["Gustave Eiffel"], "answer_start": [start]}, {"text": [], "answer_start": []})
    windows = task.windows(rows)
    assert windows.row_of.count(0) > 1 and all(len(f["input_ids"]) <= 20 for f in windows.features)
    assert decoded(task, rows) == [(0, "Gustave Eiffel")]  # in its last window only; other windows say [CLS]
    assert all(f["labels"] == [0, 0] for f, row in zip(windows.features, windows.row_of) if row == 1)
    assert windows.unreachable == 0 and task.windows(rows) is windows  # tokenized once


def test_perfect_logits_give_the_gold_answers(task):
    rows = rows_of({"text": ["1889"], "answer_start": [34]}, {"text": ["Gustave Eiffel"], "answer_start": [CONTEXT.index("Gustave")]})
    windows = task.windows(rows)
    examples = []
    for feature in windows.features:
        logits = np.full((len(feature["input_ids"]), 2), -5.0)
        logits[feature["labels"][0], 0] = logits[feature["labels"][1], 1] = 5.0
        examples.append(logits)
    answers = task.row_outputs(rows, examples)
    assert len(answers) == len(rows) < len(examples)  # one answer per question, from its windows
    assert task.metrics(rows, answers) == {"exact_match": 1.0, "f1": 1.0}
    first = task.predictions(rows, answers)[0]
    assert first["answer"] == "1889" and CONTEXT[first["start"]:first["end"]] == "1889" and first["id"] == "0"


def test_unanswerable_wins_only_beyond_the_threshold(task):
    from tunesmith.tasks.question_answering import _pick

    spans = [(3.0, 34, 38), (1.0, 42, 47)]
    assert _pick(spans, 2.0, CONTEXT, with_null=True, threshold=0.0)["answer"] == "1889"
    abstained = _pick(spans, 3.5, CONTEXT, with_null=True, threshold=0.0)
    assert abstained["answer"] == "" and abstained["start"] is None and 0 < abstained["probability"] < 1
    assert _pick(spans, 3.5, CONTEXT, with_null=True, threshold=1.0)["answer"] == "1889"
    assert _pick(spans, 9.0, CONTEXT, with_null=False, threshold=0.0)["answer"] == "1889"  # SQuAD 1.1 always answers


def test_a_question_that_fills_the_window_is_named(task):
    rows = LabelledRows("q.jsonl", {"id": ["1"], "question": ["why " * 30], "context": [CONTEXT]},
                        [{"text": [], "answer_start": []}], [7])
    with pytest.raises(DataError, match=r"q.jsonl, line 7: the question takes 30 tokens, leaving 0 of data.max_length=20"):
        task.windows(rows)


# ---- runs ---------------------------------------------------------------------------------------


def synthetic_squad(path: Path, n: int, seed: int) -> Path:
    """Questions a tiny model can learn: the answer is the word after 'code'."""
    rng = np.random.default_rng(seed)
    words = ["apple", "river", "stone", "cloud", "forest", "candle", "mirror", "garden"]
    records = []
    for i in range(n):
        filler = " ".join(rng.choice(words, size=int(rng.integers(3, 12))))
        answer = str(rng.choice(words))
        context = f"{filler} code {answer} {' '.join(rng.choice(words, size=4))}."
        start = len(filler) + len(" code ")
        records.append({"id": f"s{i}", "question": "What is the code?", "context": context,
                        "answers": {"text": [answer], "answer_start": [start]}})
    path.write_text(jsonl(*records), encoding="utf-8")
    return path


def test_tiny_bert_trains_saves_evaluates_and_predicts(tiny_bert, tmp_path):
    from transformers import AutoModelForQuestionAnswering

    from tunesmith.run import evaluate, finetune, predict

    train, dev = synthetic_squad(tmp_path / "train.jsonl", 160, 0), synthetic_squad(tmp_path / "dev.jsonl", 40, 1)
    result = finetune({
        "task": "question-answering", "output_dir": str(tmp_path / "run"), "model": {"source": str(tiny_bert)},
        "data": {"train": str(train), "validation": str(dev), "max_length": 48},
        "training": {"num_train_epochs": 4, "learning_rate": 3e-3, "per_device_train_batch_size": 16},
    }, quiet=True)
    assert result.final["loss"] < result.baseline["loss"] - 1.0
    assert result.final["exact_match"] > result.baseline["exact_match"]
    assert AutoModelForQuestionAnswering.from_pretrained(result.best_model_dir).config.tunesmith_unanswerable is False

    scores = evaluate(str(result.best_model_dir), str(dev))
    assert scores["f1"] == pytest.approx(result.final["f1"], abs=1e-6)

    card = (result.run_dir / "README.md").read_text(encoding="utf-8")  # its usage snippet runs as written
    snippet = card.split("```python\n")[1].split("```")[0].replace("path/to/best", str(result.best_model_dir))
    exec(compile(snippet, "model-card", "exec"), {})

    out = predict(str(result.run_dir), str(dev), str(tmp_path / "pred.jsonl"))
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    contexts = [json.loads(line)["context"] for line in dev.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == [f"s{i}" for i in range(40)]
    for record, context in zip(records, contexts):
        assert record["answer"] == context[record["start"]:record["end"]] and 0 <= record["probability"] <= 1


def test_lora_adapters_train_and_merge(tiny_bert, tmp_path):
    from tunesmith.run import finetune

    train = synthetic_squad(tmp_path / "train.jsonl", 64, 0)
    result = finetune({
        "task": "question-answering", "output_dir": str(tmp_path / "run"), "model": {"source": str(tiny_bert)},
        "data": {"train": str(train), "max_length": 48}, "lora": {"enabled": True, "r": 4},
        "training": {"num_train_epochs": 2, "learning_rate": 3e-3, "per_device_train_batch_size": 16},
    }, quiet=True)
    check = json.loads((result.best_model_dir / "merged" / "merge_check.json").read_text())
    assert check["max_abs_diff"] < 1e-4 and (result.best_model_dir / "adapter_config.json").is_file()


@pytest.mark.slow
def test_minilm_learns_squad(shared_data, tmp_path):
    """demo:minilm on 1,000 questions of squad_dev_small for two epochs (about 3 minutes on 2 CPU cores)."""
    from tunesmith.run import finetune, predict

    squad = shared_data / "squad_dev_small"
    result = finetune({
        "task": "question-answering", "output_dir": str(tmp_path / "run"),
        "data": {"train": str(squad / "train.jsonl"), "validation": str(squad / "dev.jsonl"),
                 "max_train_samples": 1000, "max_eval_samples": 200, "max_length": 256},
        "training": {"num_train_epochs": 2, "learning_rate": 1.5e-4, "per_device_train_batch_size": 16},
        "strategy": {"layer_lr_decay": 0.9},
    }, quiet=True)
    assert result.final["f1"] > result.baseline["f1"] + 0.15, (result.baseline, result.final)

    dev = [json.loads(line) for line in (squad / "dev.jsonl").read_text(encoding="utf-8").splitlines()[:50]]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": r["question"], "context": r["context"]}) + "\n" for r in dev))
    records = [json.loads(line) for line in predict(str(result.run_dir), str(questions), str(tmp_path / "a.jsonl"))
               .read_text(encoding="utf-8").splitlines()]
    assert [r["question"] for r in records] == [r["question"] for r in dev]
    assert all(a["answer"] and r["context"][a["start"]:a["end"]] == a["answer"] for r, a in zip(dev, records))


def contract_case(request, make) -> dict:
    """The task contract's case (tests/tasks/test_contract.py): contexts long enough for several windows."""
    rows = []
    for _ in range(24):
        before, answer = " ".join(make.words(int(make.rng.integers(2, 30)))), make.words(1)[0]
        rows.append({"question": "Which word follows code?", "context": f"{before} code {answer} end",
                     "answers": {"text": [answer], "answer_start": [len(before) + 6]}})
    return {"model": {"source": str(request.getfixturevalue("tiny_bert"))},
            "data": {"train": make.jsonl(rows), "max_length": 24}}


def test_an_absurdly_long_context_is_cut_by_characters_before_tokenizing(task, recording_tokenizer, monkeypatch,
                                                                          caplog):
    monkeypatch.setattr("tunesmith.tasks.question_answering.MAX_CONTEXT_CHARS", 3000)  # 1,000,000 in use
    task.tokenizer = recording_tokenizer(task.tokenizer)
    huge = CONTEXT + " More words follow here." * 200_000 + " Gustave Eiffel again."  # 4.8 MB
    late = huge.rindex("Gustave")
    rows = LabelledRows("mem", {"id": ["0", "1"], "question": ["Who designed it?"] * 2, "context": [huge, CONTEXT]},
                        [{"text": ["Gustave Eiffel"], "answer_start": [late]},
                         {"text": ["Gustave Eiffel"], "answer_start": [CONTEXT.index("Gustave")]}], [1, 2])
    windows = task.windows(rows)
    assert task.tokenizer.most_chars <= 3000 + len(CONTEXT) + 40 < len(huge) // 100
    assert windows.contexts_cut == 1 and windows.unreachable == 1  # the answer past the cut is in no window
    assert "1 contexts longer than 3000 characters were cut to that length before tokenizing (first at line 1)" \
        in caplog.text
