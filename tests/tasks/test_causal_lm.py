"""Causal-LM instruction tuning on the real SmolLM2-135M-Instruct weights (demo:smollm2): chat
reading and its errors, prompt masking, packing, a short fine-tune whose `best/` loads in plain
transformers, and (slow) LoRA with merge, `tunesmith predict` and `tunesmith evaluate`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import tunesmith
from tunesmith.config import load_config
from tunesmith.data.chat import read_chats
from tunesmith.errors import ConfigError, DataError
from tunesmith.tasks import get_task

WORDS = ("apple river stone cloud maple tiger candle violet harbor pepper silver garden rocket meadow pillow "
         "jungle").split()
IGNORE = -100


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def repeat_data(tmp_path_factory) -> Path:
    """16 rows of a deterministic instruction the pre-trained model does not follow exactly."""
    folder = tmp_path_factory.mktemp("repeat")
    return write_jsonl(folder / "train.jsonl", [{"prompt": f"Repeat the word: {w}", "response": w} for w in WORDS])


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """demo:smollm2 loaded once from its GGUF file by the task and saved as a plain checkpoint
    (the GGUF de-quantization takes ~25 s; the copy loads in ~2 s)."""
    folder = tmp_path_factory.mktemp("smollm2")
    task = get_task(load_config({"task": "causal-lm", "model": {"source": "demo:smollm2"}}))
    task.save(task.build_model(), str(folder))
    return folder


def config(source, data_file: Path, tmp_path: Path, **sections) -> dict:
    base = {"task": "causal-lm", "output_dir": str(tmp_path / "run"), "model": {"source": str(source)},
            "data": {"train": str(data_file), "validation_split": 0.25, "max_length": 64},
            "training": {"num_train_epochs": 1, "per_device_train_batch_size": 4, "learning_rate": 1e-4,
                         "warmup_ratio": 0.0, "logging_steps": 1},
            "causal_lm": {"max_new_tokens": 6}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return base


def prepared(cfg: dict):
    task = get_task(load_config(cfg))
    task.preflight()
    return task


# ---- reading chats ------------------------------------------------------------------------------


def test_chats_and_prompt_response_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}]},
        "",
        {"q": "2+2?", "a": "4"},
    ])
    rows = read_chats(path, "messages", "q", "a", labelled=True, bad_rows="error")
    assert rows.labels == ["Hello", "4"] and rows.lines == [1, 3]
    assert rows.inputs["messages"][0] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert rows.inputs["messages"][1] == [{"role": "user", "content": "2+2?"}]


@pytest.mark.parametrize(("row", "message"), [
    ({"text": "hi"}, r"line 2: neither 'messages' nor a non-empty 'prompt' key"),
    ({"messages": [{"role": "robot", "content": "x"}]}, r"line 2: 'messages': each message needs a role"),
    ({"messages": [{"role": "user", "content": "x"}]}, r"line 2: the last message must be a non-empty assistant"),
    ({"prompt": "x", "response": " "}, r"line 2: the last message must be a non-empty assistant"),
    ("[1, 2]", r"line 2: expected a JSON object"),
    ("{oops", r"line 2: not valid JSON"),
])
def test_bad_rows_name_file_line_key_and_fix(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, row])
    with pytest.raises(DataError, match=message) as error:
        read_chats(path, "messages", "prompt", "response", labelled=True, bad_rows="error")
    assert str(path) in str(error.value)
    if isinstance(row, dict):
        assert "data.bad_rows: skip" in str(error.value)
        skipped = read_chats(path, "messages", "prompt", "response", labelled=True, bad_rows="skip")
        assert len(skipped) == 1 and skipped.skipped == 1


def test_no_usable_rows_names_the_keys_to_set(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"no usable rows.*causal_lm.messages_column / prompt_column"):
        read_chats(path, "messages", "prompt", "response", labelled=True, bad_rows="skip")


def test_exact_match_needs_generation_and_loss_is_the_default_metric(repeat_data, tmp_path):
    assert load_config(config("demo:smollm2", repeat_data, tmp_path)).training.metric_for_best_model == "loss"
    cfg = config("demo:smollm2", repeat_data, tmp_path, training={"metric_for_best_model": "exact_match"},
                 causal_lm={"generate_on_eval": False})
    with pytest.raises(ConfigError, match="exact_match needs generated answers"):
        prepared(cfg)


# ---- tokens and labels --------------------------------------------------------------------------


def test_labels_mask_the_prompt_exactly(smollm2, repeat_data, tmp_path):
    task = prepared(config(smollm2, repeat_data, tmp_path))
    task.load_tokenizer()
    tok = task.tokenizer
    rows = task.eval_rows
    features = task.dataset(rows, train=False)
    for prompt, answer, f in zip(rows.inputs["messages"], rows.labels, features):
        expected_prompt = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        n = len(f["prompt_ids"])
        assert tok.decode(f["input_ids"][:n]) == expected_prompt == tok.decode(f["prompt_ids"])
        assert f["labels"][:n] == [IGNORE] * n  # no loss on any prompt token
        assert f["labels"][n:] == f["input_ids"][n:]  # every response token carries the loss
        assert tok.decode(f["labels"][n:]) == f"{answer}<|im_end|>\n"  # ... up to the end-of-turn token
    batch = task.collate(features)
    for i, f in enumerate(features):
        length = len(f["input_ids"])
        assert batch["attention_mask"][i].sum() == length
        assert (batch["labels"][i, length:] == IGNORE).all()  # padding has no loss
        assert batch["prompt_mask"][i, -len(f["prompt_ids"]):].all()  # prompts are left-padded for generation


def test_earlier_assistant_turns_train_and_generation_starts_at_the_last(smollm2, tmp_path):
    chat = [{"role": "user", "content": "Say A"}, {"role": "assistant", "content": "A"},
            {"role": "user", "content": "Say B"}, {"role": "assistant", "content": "B"}]
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": chat}] * 2)
    task = prepared(config(smollm2, data, tmp_path, data={"validation": str(data)}))
    task.load_tokenizer()
    f = task.dataset(task.eval_rows, train=False)[0]
    assert task.tokenizer.decode([t for t in f["labels"] if t != IGNORE]) == "A<|im_end|>\nB<|im_end|>\n"
    assert task.tokenizer.decode(f["prompt_ids"]).endswith("Say B<|im_end|>\n<|im_start|>assistant\n")


def test_a_prompt_that_fills_max_length_is_an_error_naming_the_line(smollm2, repeat_data, tmp_path):
    task = prepared(config(smollm2, repeat_data, tmp_path, data={"max_length": 30}))
    task.load_tokenizer()
    with pytest.raises(DataError, match=r"train.jsonl: 12 rows have a prompt of data.max_length=30 tokens or more, "
                                        r"leaving no room for the answer \(lines 1, 2, .*raise data.max_length"):
        task.dataset(task.train_rows, train=True)


def test_packing_gives_the_unpacked_loss(smollm2, repeat_data, tmp_path):
    task = prepared(config(smollm2, repeat_data, tmp_path, causal_lm={"packing": True}))
    model = task.build_model().eval()
    features = task.dataset(task.train_rows.subset([0, 1, 2, 3]), train=True)
    packed = task.collate(features)
    assert packed["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in features))
    assert packed["position_ids"][0, len(features[0]["input_ids"])] == 0  # positions restart per example
    task.config.causal_lm.packing = False
    padded = task.collate(features)
    with torch.no_grad():
        loss_packed, _ = task.loss(model, packed)
        loss_padded, _ = task.loss(model, padded)
    assert loss_packed.item() == pytest.approx(loss_padded.item(), abs=1e-4)
    task.config.causal_lm.packing = True
    assert task.lengths(features) is None  # packed training batches are not grouped by length
    assert task.lengths(task.dataset(task.eval_rows, train=False))  # evaluation batches are padded: grouped


def test_the_head_projects_only_answer_positions_and_the_loss_is_the_models_own(smollm2, repeat_data, tmp_path,
                                                                                 monkeypatch):
    from tunesmith.tasks import causal_lm

    task = prepared(config(smollm2, repeat_data, tmp_path))
    model = task.build_model().eval()
    features = task.dataset(task.eval_rows, train=False)
    batch = task.collate(features)
    width = batch["input_ids"].shape[1]
    answers = int((batch["labels"][:, 1:width] != IGNORE).sum())
    projected = []
    model.lm_head.register_forward_hook(lambda module, args, out: projected.append(args[0].shape[:-1].numel()))
    with torch.no_grad():
        loss, outputs = task.loss(model, batch)
        own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    labels=batch["labels"][:, :width]).loss
        monkeypatch.setattr(causal_lm, "_head_slices", lambda model_class: False)  # a head that cannot slice
        loss_full, outputs_full = task.loss(model, batch)
    assert projected[0] == answers < batch["attention_mask"].sum() / 3  # not the prompts, not the padding
    assert loss.item() == pytest.approx(own.item(), abs=1e-4)
    assert loss_full.item() == pytest.approx(own.item(), abs=1e-4)
    assert torch.allclose(outputs["loss_sums"], outputs_full["loss_sums"], atol=1e-4)
    assert outputs["tokens"].sum() == answers


# ---- fine-tuning --------------------------------------------------------------------------------


def test_short_finetune_lowers_the_response_loss_and_best_loads_in_transformers(smollm2, repeat_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = config(smollm2, repeat_data, tmp_path, training={"num_train_epochs": 1, "learning_rate": 2e-4})
    result = tunesmith.finetune(cfg, quiet=True)
    assert set(result.baseline) >= {"loss", "perplexity", "exact_match"}
    assert result.baseline["exact_match"] == 0.0  # the pre-trained model chats instead of repeating
    assert result.final["loss"] < 0.5 * result.baseline["loss"]
    assert result.final["perplexity"] == pytest.approx(torch.tensor(result.final["loss"]).exp().item(), rel=1e-4)

    best = result.best_model_dir
    model = AutoModelForCausalLM.from_pretrained(best).eval()
    tokenizer = AutoTokenizer.from_pretrained(best)
    predicted = [json.loads(line) for line in (result.run_dir / "predictions_validation.jsonl").open()]
    for record in predicted:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": record["prompt"]}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=6, do_sample=False)
        answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert answer == record["response"]  # plain transformers generates what the run reported
    matched = sum(r["response"].lower() == r["true_label"].lower() for r in predicted) / len(predicted)
    assert matched == pytest.approx(result.final["exact_match"])


@pytest.mark.slow
def test_lora_on_demo_smollm2_writes_adapter_and_matching_merge_then_predicts(repeat_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.cli import app

    cfg = config("demo:smollm2", repeat_data, tmp_path, training={"num_train_epochs": 2, "learning_rate": 2e-3},
                 lora={"enabled": True, "r": 8, "alpha": 16}, causal_lm={"packing": True})
    result = tunesmith.finetune(cfg, quiet=True)
    assert result.final["loss"] < 0.5 * result.baseline["loss"]
    assert result.final["exact_match"] > result.baseline["exact_match"]
    best = result.best_model_dir
    adapter = json.loads((best / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM" and "config.json" not in {p.name for p in best.iterdir()}
    assert json.loads((best / "merged" / "merge_check.json").read_text())["passed"]

    # the adapter on the base model and the merged model (plain transformers) give the same logits
    task = get_task(load_config(cfg))
    with_adapter = PeftModel.from_pretrained(task.build_model(), str(best)).eval()
    merged = AutoModelForCausalLM.from_pretrained(best / "merged").eval()
    ids = torch.tensor([task.encode([{"role": "user", "content": "Repeat the word: orange"}], None)[0]])
    with torch.no_grad():
        expected, got = with_adapter(input_ids=ids).logits, merged(input_ids=ids).logits
    assert (expected - got).abs().max() <= 1e-4 * expected.abs().max()  # float32 rounding of the folded weights

    rows = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"Repeat the word: {w}"} for w in WORDS[:3]])
    runner = CliRunner()
    for name in ("out.csv", "out.jsonl"):
        outcome = runner.invoke(app, ["predict", str(result.run_dir), "--data", str(rows), "--output", str(tmp_path / name)])
        assert outcome.exit_code == 0, outcome.output
    with (tmp_path / "out.csv").open() as f:
        records = list(csv.DictReader(f))
    assert [r["prompt"] for r in records] == [f"Repeat the word: {w}" for w in WORDS[:3]]
    assert all(r["response"] for r in records)
    outcome = runner.invoke(app, ["evaluate", str(result.run_dir), "--data", str(repeat_data)])
    assert outcome.exit_code == 0, outcome.output
    assert "exact_match" in outcome.output and "perplexity" in outcome.output


def contract_case(request, make) -> dict:
    """The task contract's case (tests/tasks/test_contract.py): a 1-layer Llama repeating a word."""
    rows = [{"prompt": f"Repeat: {w}", "response": w} for w in make.words(24)]
    return {"model": {"source": str(request.getfixturevalue("tiny_llama"))}, "data": {"train": make.jsonl(rows)},
            "causal_lm": {"max_new_tokens": 4}}


def test_a_multi_megabyte_answer_is_cut_by_characters_before_tokenizing_and_counted(recording_tokenizer):
    from transformers import AutoTokenizer

    from tunesmith.data.labelled import LabelledRows
    from tunesmith.data.text_limits import char_limit
    from tunesmith.models.sources import resolve_source

    task = get_task(load_config({"task": "causal-lm", "model": {"source": "demo:smollm2"}, "data": {"max_length": 64}}))
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("demo:minilm").location)  # no chat template: plain turns
    tokenizer.eos_token = "[SEP]"
    task.tokenizer = recording_tokenizer(tokenizer)
    huge = "word " * 800_000  # 4 MB
    rows = LabelledRows("mem", {"messages": [[{"role": "user", "content": "Say words"}]] * 2}, [huge, "ok"], [1, 2])
    features = task.dataset(rows, train=True)
    assert task.tokenizer.most_chars <= char_limit(64) + len("[SEP]") < len(huge) // 100
    assert task.truncated == 1 and len(features[0]["input_ids"]) == 64 and len(features[1]["input_ids"]) < 64
