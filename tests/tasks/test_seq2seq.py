"""Sequence-to-sequence: source/target reading, teacher-forcing batches, BLEU/ROUGE against hand-computed
cases, and runs on a tiny BART and on a BERT warm-started as an encoder-decoder (both built from configs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tunesmith.config import load_config
from tunesmith.errors import ConfigError, DataError
from tunesmith.report.text_metrics import generation_metrics

WORDS = ["apple", "river", "stone", "cloud", "forest", "candle", "mirror", "garden"]


def pairs(path: Path, n: int, seed: int, source: str = "source", target: str = "target") -> Path:
    """A task a tiny model learns in a few seconds: write the source's first word."""
    rng = np.random.default_rng(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            words = list(rng.choice(WORDS, size=int(rng.integers(2, 5))))
            f.write(json.dumps({source: " ".join(words), target: words[0]}) + "\n")
    return path


# ---- metrics and config -------------------------------------------------------------------------


def test_bleu_and_rouge_match_a_hand_computed_case():
    m = generation_metrics(["the cat is on the mat"], ["the cat sat on the mat"])
    # n-gram precisions 5/6, 3/5, 1/4 and 0/3 (smoothed to 0.5/3); same length, so no brevity penalty
    assert m["bleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25, rel=1e-6)
    assert m["rouge1"] == pytest.approx(100 * 5 / 6) and m["rouge2"] == pytest.approx(60.0)
    assert m["rougeL"] == pytest.approx(100 * 5 / 6)  # longest common subsequence: the cat on the mat
    assert generation_metrics(["a b"], ["a b"])["rouge2"] == 100.0
    assert generation_metrics([""], ["the cat"]) == {"bleu": 0.0, "rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_config_defaults_and_metrics_for_seq2seq():
    assert load_config({"task": "seq2seq"}).training.metric_for_best_model == "loss"
    assert load_config({"task": "seq2seq", "training": {"metric_for_best_model": "rougeL"}}).greater_is_better
    with pytest.raises(ConfigError, match="unknown metric 'f1' for seq2seq; choose one of loss, perplexity, bleu, rouge1, rouge2, rougeL"):
        load_config({"task": "seq2seq", "training": {"metric_for_best_model": "f1"}})


# ---- data and batches ---------------------------------------------------------------------------


@pytest.fixture
def task(tiny_bart):
    from tunesmith.tasks import get_task

    t = get_task(load_config({"task": "seq2seq", "model": {"source": str(tiny_bart)},
                              "seq2seq": {"source_prefix": "reverse: ", "max_target_length": 4}}))
    t.build_model()
    return t


def test_columns_come_from_the_seq2seq_section(task, tmp_path):
    path = pairs(tmp_path / "d.jsonl", 3, 0, source="en", target="de")
    with pytest.raises(DataError, match=r"column 'source' not found; columns are 'en', 'de' \(set seq2seq.source_column"):
        task._read(str(path))
    task.config.seq2seq.source_column, task.config.seq2seq.target_column = "en", "de"
    rows = task._read(str(path))
    assert len(rows) == 3 and rows.inputs["source"][0].split()[0] == rows.labels[0]


def test_batches_teacher_force_the_targets(task, tmp_path):
    rows = task._read(str(pairs(tmp_path / "d.jsonl", 2, 1)))
    rows.labels[1] = "stone river apple cloud"
    data = task.dataset(rows, train=True)
    assert task.tokenizer.decode(data[0]["input_ids"], skip_special_tokens=True).startswith("reverse :")
    assert len(data[1]["labels"]) == 4 and task.truncated["targets"] == 1  # cut at max_target_length
    batch = task.collate(data)
    labels, shifted = batch["labels"], batch["decoder_input_ids"]
    assert labels.shape == (2, 4) and shifted.shape == (2, 4)  # both: the batch's longest target
    assert shifted[:, 0].tolist() == [101, 101] and (shifted[:, 1:] == labels[:, :3].clamp(min=0)).all()
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert task.collate(data[:1])["labels"].shape == (1, 3) == task.collate(data[:1])["decoder_input_ids"].shape


def test_a_decoder_only_source_is_sent_to_causal_lm(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunesmith.models.sources import resolve_source
    from tunesmith.tasks import get_task

    LlamaForCausalLM(LlamaConfig(vocab_size=30522, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(resolve_source("demo:minilm").location).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="for a decoder-only language model use task: causal-lm"):
        get_task(load_config({"task": "seq2seq", "model": {"source": str(tmp_path)}})).build_model()


# ---- runs ---------------------------------------------------------------------------------------


def run_config(source: Path, tmp_path: Path, **extra) -> dict:
    return {"task": "seq2seq", "output_dir": str(tmp_path / "run"), "model": {"source": str(source)},
            "data": {"train": str(pairs(tmp_path / "train.jsonl", 160, 0)),
                     "validation": str(pairs(tmp_path / "dev.jsonl", 24, 1)), "max_length": 16},
            "seq2seq": {"max_target_length": 16, "max_new_tokens": 8},
            "training": {"num_train_epochs": 8, "learning_rate": 1e-2, "per_device_train_batch_size": 16,
                         "per_device_eval_batch_size": 5,  # batches of different target lengths
                         "lr_scheduler_type": "constant", "early_stopping_patience": None}, **extra}


def test_tiny_bart_trains_saves_evaluates_and_predicts(tiny_bart, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    from tunesmith.run import evaluate, finetune, predict

    result = finetune(run_config(tiny_bart, tmp_path), quiet=True)
    assert result.final["loss"] < 1.0 < 9.0 < result.baseline["loss"]
    assert {"bleu", "rouge1", "rouge2", "rougeL", "perplexity"} <= set(result.final)
    assert result.final["rouge1"] > result.baseline["rouge1"] == 0.0
    assert type(AutoModelForSeq2SeqLM.from_pretrained(result.best_model_dir)).__name__ == "BartForConditionalGeneration"

    scores = evaluate(str(result.best_model_dir), str(tmp_path / "dev.jsonl"))
    assert scores["rouge1"] == pytest.approx(result.final["rouge1"], abs=1e-6)

    out = predict(str(result.run_dir), str(tmp_path / "dev.jsonl"), str(tmp_path / "pred.jsonl"))
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 24 and all(set(r) == {"line", "source", "output"} for r in records)
    assert sum(r["output"] in WORDS for r in records) > 12  # it writes one of the words, often the right one


def test_an_encoder_is_warm_started_as_an_encoder_decoder(tiny_bert, tmp_path, caplog):
    import logging

    from transformers import AutoModelForSeq2SeqLM

    from tunesmith.run import finetune

    caplog.set_level(logging.INFO, logger="tunesmith")
    config = run_config(tiny_bert, tmp_path, strategy={"freeze": 1, "layer_lr_decay": 0.9})
    config["training"].update(num_train_epochs=2)
    result = finetune(config, quiet=True)
    assert "warm-starting an encoder-decoder" in caplog.text
    assert result.final["loss"] < result.baseline["loss"]
    model = AutoModelForSeq2SeqLM.from_pretrained(result.best_model_dir)
    assert type(model).__name__ == "EncoderDecoderModel" and model.config.decoder_start_token_id == 101


def test_lora_adapters_train_and_merge(tiny_bart, tmp_path):
    from tunesmith.run import finetune

    config = run_config(tiny_bart, tmp_path, lora={"enabled": True, "r": 4})
    config["training"].update(num_train_epochs=1)
    result = finetune(config, quiet=True)
    check = json.loads((result.best_model_dir / "merged" / "merge_check.json").read_text())
    assert check["max_abs_diff"] < 1e-4 and (result.best_model_dir / "adapter_config.json").is_file()


def test_lora_on_a_warm_started_model_trains_its_new_cross_attention(tiny_bert):
    from tunesmith.strategies.lora import apply_lora
    from tunesmith.tasks import get_task

    config = load_config({"task": "seq2seq", "model": {"source": str(tiny_bert)}, "lora": {"enabled": True}})
    model = apply_lora(get_task(config).build_model(), config)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("crossattention" in n and "modules_to_save" in n for n in trained)
    assert any("lora_A" in n for n in trained) and not any("intermediate.dense.weight" in n and "lora" not in n for n in trained)


def contract_case(request, make) -> dict:
    """The task contract's case (tests/tasks/test_contract.py): a tiny BART reversing word lists."""
    rows = [{"source": " ".join(w), "target": " ".join(w[::-1])}
            for w in (make.words(int(make.rng.integers(1, 6))) for _ in range(24))]
    return {"model": {"source": str(request.getfixturevalue("tiny_bart"))}, "data": {"train": make.jsonl(rows)},
            "seq2seq": {"max_new_tokens": 4}}


def test_multi_megabyte_sources_and_targets_are_cut_by_characters_before_tokenizing(task, recording_tokenizer):
    from tunesmith.data.labelled import LabelledRows
    from tunesmith.data.text_limits import char_limit

    task.tokenizer = recording_tokenizer(task.tokenizer)
    huge = "abc def " * 500_000  # 4 MB
    rows = LabelledRows("mem", {"source": [huge, "short"]}, [huge, "x"], [2, 3])
    task.dataset(rows, train=True)
    assert task.tokenizer.most_chars <= char_limit(task.max_length) + 20 < len(huge) // 100
    assert task.truncated == {"sources": 1, "targets": 1}


def test_the_batch_size_probe_leaves_the_truncation_counts_as_they_were(task, tmp_path):
    """The probe encodes the longest rows once more; seq2seq counts in a dict, which must be restored by value."""
    from tunesmith.engine.batch_size import longest_examples

    task.config.data.max_length = 4  # cuts the sources, so the count can move
    rows = task._read(str(pairs(tmp_path / "d.jsonl", 8, 0)))
    task.train_rows = rows
    task.dataset(rows, train=True)
    before = dict(task.truncated)
    assert before["sources"] > 0
    longest_examples(task, 4)
    assert task.truncated == before


def test_the_model_card_uses_the_hubs_task_names(tmp_path):
    from tunesmith.report.model_card import write_model_card

    for task_name, tag in (("seq2seq", "text2text-generation"), ("causal-lm", "text-generation"),
                           ("text-classification", "text-classification")):
        config = load_config({"task": task_name})
        write_model_card(tmp_path / "README.md", config, {}, {"loss": 1.0}, {"loss": 0.5},
                         {"steps": 1, "epochs": 1.0, "train_seconds": 1.0, "stopped_early": False}, "")
        assert f"pipeline_tag: {tag}\n" in (tmp_path / "README.md").read_text()
