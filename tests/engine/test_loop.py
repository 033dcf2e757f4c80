"""The training loop on a tiny BERT and the shipped reviews: run directory, strategies, early stopping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import tunesmith
from tunesmith.config import load_config


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_directory_holds_everything(tiny_config):
    result = tunesmith.finetune(tiny_config, quiet=True)
    run = result.run_dir
    assert (run / "config.yaml").exists() and (run / "README.md").exists() and (run / "data.json").exists()
    saved = load_config(run / "config.yaml")
    assert saved.model.source == tiny_config["model"]["source"]
    phases = [r["phase"] for r in records(run) if r["phase"] != "train"]
    assert phases == ["baseline", "eval", "eval", "final"]
    first = next(r for r in records(run) if r["phase"] == "eval")
    assert set(first) >= {"step", "epoch", "loss", "accuracy", "macro_f1", "per_class", "confusion_matrix", "train_loss", "lr"}
    curve = [r for r in records(run) if r["phase"] == "train"]
    assert [r["step"] for r in curve] == list(range(1, 13))  # logging_steps 1, 6 steps per epoch
    assert all(r["train_loss"] > 0 and r["lr"] >= 0 for r in curve)
    assert sum(map(sum, first["confusion_matrix"])) == 32
    best_config = json.loads((run / "best" / "config.json").read_text())
    assert best_config["id2label"] == {"0": "negative", "1": "positive"}
    assert (run / "best" / "model.safetensors").exists() and (run / "best" / "tokenizer.json").exists()
    assert len(list((run / "checkpoints").glob("step-*"))) == 1  # save_total_limit 1
    card = (run / "README.md").read_text()
    assert "| accuracy |" in card and "pre-trained" in card


def test_best_checkpoint_is_restored(tiny_config):
    result = tunesmith.finetune(tiny_config, quiet=True)
    evals = [r for r in records(result.run_dir) if r["phase"] == "eval"]
    best = max(evals, key=lambda r: (r["accuracy"], -r["loss"]))  # a tie goes to the lower validation loss
    assert result.best_step == best["step"]
    assert result.final["accuracy"] == pytest.approx(best["accuracy"])
    assert result.final["loss"] == pytest.approx(best["loss"], rel=1e-5)


def test_first_groups_frozen_stay_bit_identical(tiny_config, tiny_bert):
    tiny_config["strategy"] = {"freeze": 2}
    result = tunesmith.finetune(tiny_config, quiet=True)
    original = load_file(str(tiny_bert / "model.safetensors"))
    tuned = load_file(str(result.run_dir / "best" / "model.safetensors"))
    frozen = [k for k in tuned if k.startswith(("bert.embeddings.", "bert.encoder.layer.0."))]
    trained = [k for k in tuned if k.startswith("bert.encoder.layer.1.")]
    assert frozen and trained
    assert all(torch.equal(original[k], tuned[k]) for k in frozen)
    assert any(not torch.equal(original[k], tuned[k]) for k in trained)


def test_gradual_unfreezing_unfreezes_one_group_per_epoch(tiny_config):
    tiny_config["training"]["num_train_epochs"] = 3
    tiny_config["training"]["early_stopping_patience"] = None
    tiny_config["strategy"] = {"gradual_unfreezing": True, "layer_lr_decay": 0.5}
    result = tunesmith.finetune(tiny_config, quiet=True)
    evals = [r for r in records(result.run_dir) if r["phase"] == "eval"]
    assert [r["trainable_groups"] for r in evals] == [
        ["head"], ["block.1", "head"], ["block.0", "block.1", "head"]]


def test_early_stopping_stops_when_the_metric_stalls(tiny_config):
    tiny_config["training"].update(num_train_epochs=6, learning_rate=1e-12, early_stopping_patience=1,
                                   metric_for_best_model="loss", early_stopping_threshold=1e-3)
    result = tunesmith.finetune(tiny_config, quiet=True)
    evals = [r for r in records(result.run_dir) if r["phase"] == "eval"]
    assert result.stopped_early and len(evals) == 2


def test_step_evaluation_and_accumulation(tiny_config):
    tiny_config["training"].update(eval_strategy="steps", eval_steps=2, gradient_accumulation_steps=2,
                                   num_train_epochs=2, early_stopping_patience=None)
    result = tunesmith.finetune(tiny_config, quiet=True)
    steps = [r["step"] for r in records(result.run_dir) if r["phase"] == "eval"]
    # 96 rows / 16 per micro-batch / 2 accumulated = 3 optimizer steps per epoch, 6 in all
    assert steps == [2, 4, 6]


def test_accumulated_micro_batches_train_as_one_batch_also_in_a_short_last_step(tiny_config, tmp_path):
    # 96 rows: at 16 x 4 a step of 64 rows, then one of 32 in two micro-batches (not four).
    tiny_config["model"]["dropout"] = 0.0
    tiny_config["training"].update(num_train_epochs=1, per_device_train_batch_size=16, gradient_accumulation_steps=4)
    accumulated = tunesmith.finetune(tiny_config, quiet=True)
    tiny_config["output_dir"] = str(tmp_path / "one-batch")
    tiny_config["training"].update(per_device_train_batch_size=64, gradient_accumulation_steps=1)
    whole = tunesmith.finetune(tiny_config, quiet=True)
    losses = [[r["train_loss"] for r in records(run) if r["phase"] == "train"]
              for run in (accumulated.run_dir, whole.run_dir)]
    assert len(losses[0]) == 2
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)


def test_same_seed_gives_identical_losses(tiny_config, tmp_path):
    first = tunesmith.finetune(tiny_config, quiet=True)
    tiny_config["output_dir"] = str(tmp_path / "again")
    second = tunesmith.finetune(tiny_config, quiet=True)
    losses = [[r.get("loss", r.get("train_loss")) for r in records(run)] for run in (first.run_dir, second.run_dir)]
    assert losses[0] == losses[1]


def test_dropout_reaches_the_saved_model(tiny_config):
    tiny_config["model"]["dropout"] = 0.2
    result = tunesmith.finetune(tiny_config, quiet=True)
    best = json.loads((result.run_dir / "best" / "config.json").read_text())
    assert best["hidden_dropout_prob"] == 0.2 and best["attention_probs_dropout_prob"] == 0.2


def test_label_smoothing_and_class_weights_change_the_loss_as_defined(tiny_config):
    import torch.nn.functional as F

    from tunesmith.data.labelled import balanced_class_weights
    from tunesmith.tasks import get_task

    tiny_config["training"].update(label_smoothing_factor=0.1, class_weights="balanced")
    task = get_task(tunesmith.load_config(tiny_config))
    task.preflight()
    model = task.build_model().eval()
    batch = task.collate(task.dataset(task.train_rows, train=True)[:16])
    with torch.no_grad():
        loss, logits = task.loss(model, batch)
        plain = F.cross_entropy(logits.float(), batch["labels"])
    weights = torch.tensor(balanced_class_weights(task.train_rows.labels, task.label_names))
    assert not torch.allclose(weights, torch.ones_like(weights)), "the sample must be imbalanced to test weights"
    expected = F.cross_entropy(logits.float(), batch["labels"], weight=weights, label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, plain)


def test_balanced_class_weights_give_each_class_the_same_total():
    from tunesmith.data.labelled import balanced_class_weights

    weights = balanced_class_weights(["a", "a", "a", "b"], ["a", "b"])
    assert weights == pytest.approx([4 / 6, 2.0])
    assert 3 * weights[0] == pytest.approx(1 * weights[1])
    assert balanced_class_weights(["a"], ["a", "b"])[1] == pytest.approx(0.5)  # an absent class counts once


def test_existing_run_is_not_overwritten_by_accident(tiny_config):
    tunesmith.finetune(tiny_config, quiet=True)
    with pytest.raises(tunesmith.RunDirError, match="already holds a run"):
        tunesmith.finetune(tiny_config, quiet=True)
    tunesmith.finetune(tiny_config, ["overwrite_output_dir=true"], quiet=True)


def test_data_is_checked_before_the_model_loads(tiny_config, tmp_path):
    tiny_config["model"]["source"] = "no-such-org/no-such-model-anywhere"  # would need the network
    tiny_config["data"]["train"] = str(tmp_path / "missing.csv")
    with pytest.raises(tunesmith.DataError, match="data file not found"):
        tunesmith.finetune(tiny_config, quiet=True)


def test_two_loader_workers_give_the_same_run(tiny_config, tmp_path):
    first = tunesmith.finetune(tiny_config, quiet=True)
    tiny_config["output_dir"] = str(tmp_path / "workers")
    tiny_config["training"]["dataloader_num_workers"] = 2
    second = tunesmith.finetune(tiny_config, quiet=True)
    a, b = records(first.run_dir), records(second.run_dir)
    assert [(r["phase"], r.get("loss"), r.get("train_loss")) for r in a] == [(r["phase"], r.get("loss"), r.get("train_loss")) for r in b]


def test_torch_compile_trains_the_same_model(tiny_config, tmp_path):
    """Compiled (inductor) and eager runs agree to float tolerance, through a freezing change
    (without dropout: compiled code draws its random masks differently)."""
    tiny_config["training"].update(num_train_epochs=2, early_stopping_patience=None)
    tiny_config["model"]["dropout"] = 0.0
    tiny_config["strategy"] = {"gradual_unfreezing": True}
    eager = tunesmith.finetune(tiny_config, quiet=True)
    tiny_config.update(output_dir=str(tmp_path / "compiled"))
    tiny_config["training"]["torch_compile"] = True
    compiled = tunesmith.finetune(tiny_config, quiet=True)
    a, b = records(eager.run_dir), records(compiled.run_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        for key in ("train_loss", "loss"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-5), (x["phase"], x["step"], key)
    one = load_file(str(eager.best_model_dir / "model.safetensors"))
    two = load_file(str(compiled.best_model_dir / "model.safetensors"))
    assert one.keys() == two.keys() and all(torch.allclose(one[k], two[k], atol=1e-4) for k in one)
