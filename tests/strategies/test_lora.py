"""LoRA with peft: what trains, layer groups, saving the adapter, merging, QLoRA errors, resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import tunesmith
from tunesmith.config import load_config
from tunesmith.errors import ConfigError


@pytest.fixture
def lora_config(tiny_config):
    tiny_config["lora"] = {"enabled": True, "r": 4, "alpha": 8}
    return tiny_config


def build(config_dict):
    from tunesmith.strategies.lora import apply_lora
    from tunesmith.tasks import get_task

    config = load_config(config_dict)
    task = get_task(config)
    task.preflight()
    return task, apply_lora(task.build_model(), config)


def test_only_adapters_and_the_new_head_train(lora_config):
    task, model = build(lora_config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".modules_to_save." in n for n in trainable)
    assert any("classifier.modules_to_save" in n for n in trainable)  # the new head trains in full
    assert {n.split(".")[-4] for n in trainable if "lora_" in n} == {"query", "value"}  # BERT defaults


def test_adapters_belong_to_the_group_of_the_layer_they_wrap(lora_config):
    task, model = build(lora_config)
    groups = task.layer_groups(model)
    assert [g.name for g in groups] == ["embeddings", "block.0", "block.1", "head"]
    assert groups[0].params == []  # embeddings have no adapter
    for i in (0, 1):
        assert groups[i + 1].params and all(f"layer.{i}." in n and "lora_" in n for n, _ in groups[i + 1].params)
    assert all("classifier" in n for n, _ in groups[-1].params)
    rows = tunesmith.inspect({**lora_config, "strategy": {"freeze": 2, "layer_lr_decay": 0.5}})
    assert [r["trains_in_epoch"][0] for r in rows] == [False, False, True, True]
    assert rows[1]["learning_rate"] == pytest.approx(lora_config["training"]["learning_rate"] * 0.25)


def test_a_run_trained_in_bf16_merges_with_the_check_in_fp32(lora_config):
    """Trained under bf16 autocast (`auto` on a CPU with AMX, or a GPU), the merge check compared the autocast
    adapter model with the fp32 merged one and refused the merge over bf16 rounding (1.5e-4 > 1e-4)."""
    lora_config["training"]["mixed_precision"] = "bf16"
    result = tunesmith.finetune(lora_config, quiet=True)
    check = json.loads((result.best_model_dir / "merged" / "merge_check.json").read_text())
    assert check["passed"] and check["max_abs_diff"] < 1e-5


def test_lora_run_saves_a_peft_adapter_and_a_checked_merge(lora_config, tiny_bert):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    lora_config["strategy"] = {"freeze": 1, "layer_lr_decay": 0.8}
    result = tunesmith.finetune(lora_config, quiet=True)
    best = result.best_model_dir
    adapter = json.loads((best / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and set(adapter["target_modules"]) == {"query", "value"}
    assert "config.json" not in {p.name for p in best.iterdir()}  # best/ is the adapter only
    check = json.loads((best / "merged" / "merge_check.json").read_text())
    assert check["passed"] and check["max_abs_diff"] < 1e-5

    # peft loads the adapter onto the base model; plain transformers loads the merged model; same outputs
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    with_adapter = PeftModel.from_pretrained(base, str(best)).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(best / "merged").eval()
    ids = torch.tensor([[101, 2023, 3185, 2001, 2307, 102]])
    with torch.no_grad():
        assert torch.allclose(with_adapter(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)
    # the backbone did not move: its merged weights differ from the base only where adapters sit
    base_weights = load_file(str(tiny_bert / "model.safetensors"))
    merged_weights = load_file(str(best / "merged" / "model.safetensors"))
    moved = {k for k in base_weights if k in merged_weights and not torch.equal(base_weights[k], merged_weights[k])}
    assert moved and all(".query." in k or ".value." in k or k.startswith("classifier.") for k in moved)
    assert any("layer.1.attention.self.query" in k for k in moved)
    # evaluate loads the merged model from the run directory; merge again from the CLI entry point
    assert tunesmith.evaluate(str(result.run_dir), lora_config["data"]["train"])["accuracy"] is not None
    again = tunesmith.run.merge(result.run_dir)
    assert again["max_abs_diff"] < 1e-5


def test_dora_trains_magnitudes(lora_config):
    lora_config["lora"]["method"] = "dora"
    _, model = build(lora_config)
    assert any("lora_magnitude_vector" in n for n, p in model.named_parameters() if p.requires_grad)


def test_qlora_without_gpu_or_bitsandbytes_is_a_clear_config_error(lora_config):
    from tunesmith.strategies.lora import check_lora

    lora_config["lora"]["quantization"] = "4bit"
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(ConfigError, match="needs a CUDA GPU") as err:
        check_lora(load_config(lora_config))
    assert "supported for task causal-lm only" in str(err.value)
    with pytest.raises(ConfigError, match="lora.quantization"):
        tunesmith.finetune(lora_config, quiet=True)


def test_unknown_target_modules_name_the_linear_layers(lora_config):
    lora_config["lora"]["target_modules"] = ["q_proj"]
    with pytest.raises(ConfigError, match="none of \\['q_proj'\\].*linear layers found: .*query"):
        build(lora_config)


def test_lora_resume_mid_epoch_is_identical(lora_config, tmp_path):
    lora_config["data"]["max_train_samples"] = 48  # 3 steps per epoch
    lora_config["training"].update(num_train_epochs=3, save_steps=1, save_total_limit=100, early_stopping_patience=None,
                                   learning_rate=3e-3)
    lora_config["strategy"] = {"gradual_unfreezing": True, "layer_lr_decay": 0.7}
    lora_config["model"]["dropout"] = 0.2
    lora_config["lora"]["dropout"] = 0.3  # adapter dropout draws from the RNG too
    reference = tunesmith.finetune({**lora_config, "output_dir": str(tmp_path / "reference")}, quiet=True).run_dir
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(reference / "checkpoints" / "step-4", resumed / "checkpoints" / "step-4")  # mid epoch 2
    saved = load_file(str(resumed / "checkpoints" / "step-4" / "model.safetensors"))
    assert any("lora_A" in k for k in saved)  # checkpoints hold the adapter weights and the new head,
    assert any("modules_to_save" in k for k in saved)  # not the frozen base, which the source rebuilds
    assert not any(k.endswith("attention.self.query.base_layer.weight") for k in saved)
    shutil.copytree(reference / "best", resumed / "best")
    shutil.copy(reference / "config.yaml", resumed / "config.yaml")
    kept = [line for line in (reference / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 4]
    (resumed / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    tunesmith.finetune({**lora_config, "output_dir": str(resumed)}, ["resume=auto"], quiet=True)

    def curve(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["phase"], r["step"], r.get("train_loss"), r.get("loss")) for r in rows]

    assert curve(resumed) == curve(reference)
    a = load_file(str(reference / "best" / "adapter_model.safetensors"))
    b = load_file(str(resumed / "best" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
