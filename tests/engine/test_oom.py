"""Out of memory during training and evaluation, injected on CPU: the micro-batch shrinks, the
effective batch, the rows of every step and `global_step` do not change, and a resume keeps the size."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tunesmith
from tunesmith.engine.batching import GroupedBatchSampler
from tunesmith.engine.oom import is_out_of_memory, smaller_micro_batch
from tunesmith.tasks.text_classification import TextClassificationTask


@pytest.fixture
def out_of_memory_above(monkeypatch):
    """Makes the task's loss raise out of memory for batches of more than `rows` rows (training or
    evaluation), from its `after`-th training call on; returns the sizes it saw."""

    def install(rows: int, training: bool = True, after: int = 0, error=torch.OutOfMemoryError):
        original, seen, calls = TextClassificationTask.loss, [], {"train": 0}

        def loss(self, model, batch):
            size = len(batch["labels"])
            if model.training:
                calls["train"] += 1
                seen.append(size)
            if model.training == training and size > rows and calls["train"] > after:
                raise error("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            return original(self, model, batch)

        monkeypatch.setattr(TextClassificationTask, "loss", loss)
        return seen

    return install


def records(run_dir, phase=None):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if phase is None or r["phase"] == phase]


def weights(run_dir):
    return load_file(str(run_dir / "best" / "model.safetensors"))


@pytest.fixture
def config32(tiny_config):
    """64 rows, micro-batch 32, no dropout: 2 optimizer steps per epoch, 2 epochs."""
    tiny_config["data"].update(max_train_samples=64, max_eval_samples=24)
    tiny_config["training"].update(per_device_train_batch_size=32, save_steps=1, save_total_limit=10)
    tiny_config["model"]["dropout"] = 0.0
    return tiny_config


def run(config, tmp_path, name, *overrides):
    return tunesmith.finetune({**config, "output_dir": str(tmp_path / name)}, list(overrides), quiet=True).run_dir


def test_the_smaller_micro_batch_divides_the_effective_batch():
    assert [smaller_micro_batch(m, 32) for m in (32, 16, 8, 2, 1)] == [16, 8, 4, 1, 0]
    assert smaller_micro_batch(5, 10) == 2 and smaller_micro_batch(25, 25) == 5 and smaller_micro_batch(7, 7) == 1
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch")) and not is_out_of_memory(MemoryError())


def test_how_a_step_is_split_does_not_change_its_rows():
    lengths = [(i * 37) % 23 for i in range(100)]
    whole = GroupedBatchSampler(lengths, 32, seed=3)
    split = GroupedBatchSampler(lengths, 8, seed=3, accumulation=4)
    for sampler in (whole, split):
        sampler.start_epoch(2)
    micro = split.epoch_batches()
    assert sorted(len(b) for b in micro) == [4] + [8] * 12 and split.num_batches == 13
    assert micro == [step[i : i + 8] for step in whole.epoch_batches() for i in range(0, len(step), 8)]
    split.resize(4, 8)
    assert sum(split.epoch_batches(), []) == sum(whole.epoch_batches(), [])


def test_out_of_memory_in_training_halves_the_micro_batch_and_keeps_the_run(config32, tmp_path, out_of_memory_above,
                                                                           caplog):
    reference = run(config32, tmp_path, "started-at-8x4", "training.per_device_train_batch_size=8",
                    "training.gradient_accumulation_steps=4")
    seen = out_of_memory_above(8)
    shrunk = run(config32, tmp_path, "shrunk")
    assert seen[:3] == [32, 16, 8] and set(seen[3:]) == {8}
    # The failed attempts drew nothing and trained nothing: from the first step the run is the 8 x 4 run.
    assert [(r["step"], r["train_loss"]) for r in records(shrunk, "train")] == [
        (r["step"], r["train_loss"]) for r in records(reference, "train")]
    assert [r["step"] for r in records(shrunk, "train")] == [1, 2, 3, 4]
    a, b = weights(reference), weights(shrunk)
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [r.message for r in caplog.records if "out of memory" in r.message]
    assert lines == ["out of memory in step 1 at a micro-batch of 32: continuing with micro-batches of 8 and gradient "
                     f"accumulation x4 (effective batch 32 unchanged); saved in {shrunk / 'config.yaml'}"]
    saved = yaml.safe_load((shrunk / "config.yaml").read_text())["training"]
    assert (saved["per_device_train_batch_size"], saved["gradient_accumulation_steps"]) == (8, 4)
    state = json.loads((shrunk / "checkpoints" / "step-3" / "state.json").read_text())
    assert (state["micro_batch"], state["accumulation"], state["shrunk_from"], state["global_step"]) == (8, 4, 32, 3)


def test_out_of_memory_mid_run_redoes_only_that_step(config32, tmp_path, out_of_memory_above):
    """From step 2 on, micro-batches of more than 8 run out of memory. Step 1 is the 32 x 1 run's
    exactly; later steps hold the same 32 rows in 4 micro-batches, so their losses match it to float
    rounding (the mean of four 8-row means, and shorter padding, sum in another order)."""
    reference = run(config32, tmp_path, "whole")
    seen = out_of_memory_above(8, after=1)
    shrunk = run(config32, tmp_path, "shrunk")
    assert seen[:4] == [32, 32, 16, 8]
    expected, got = records(reference, "train"), records(shrunk, "train")
    assert [r["step"] for r in got] == [r["step"] for r in expected] == [1, 2, 3, 4]
    assert got[0]["train_loss"] == expected[0]["train_loss"]
    assert [r["train_loss"] for r in got] == pytest.approx([r["train_loss"] for r in expected], rel=1e-5, abs=1e-6)
    assert [r["accuracy"] for r in records(shrunk, "eval")] == [r["accuracy"] for r in records(reference, "eval")]


def test_out_of_memory_after_a_step_has_begun_drops_its_gradients(config32, tmp_path, out_of_memory_above):
    """At 16 x 2 the second micro-batch of step 1 runs out of memory after the first one's backward:
    the gradients accumulated so far are dropped and the step is redone at 8 x 4, so the run is the
    8 x 4 run bit for bit (nothing of the abandoned micro-batch is counted twice)."""
    reference = run(config32, tmp_path, "started-at-8x4", "training.per_device_train_batch_size=8",
                    "training.gradient_accumulation_steps=4")
    seen = out_of_memory_above(8, after=1)
    shrunk = run(config32, tmp_path, "shrunk", "training.per_device_train_batch_size=16",
                 "training.gradient_accumulation_steps=2")
    assert seen[:3] == [16, 16, 8] and set(seen[2:]) == {8}
    assert [(r["step"], r["train_loss"]) for r in records(shrunk, "train")] == [
        (r["step"], r["train_loss"]) for r in records(reference, "train")]
    a, b = weights(reference), weights(shrunk)
    assert all(torch.equal(a[k], b[k]) for k in a)

def test_resume_keeps_the_micro_batch_found_after_out_of_memory(config32, tmp_path, out_of_memory_above, caplog):
    out_of_memory_above(8)
    full = run(config32, tmp_path, "full")
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-3", resumed / "checkpoints" / "step-3")  # mid-epoch 2
    shutil.copytree(full / "best", resumed / "best")
    shutil.copy(full / "config.yaml", resumed / "config.yaml")
    kept = [line for line in (full / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 3]
    (resumed / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    seen = out_of_memory_above(8)  # still out of memory above 8: the resumed run must not try 32 again
    run(config32, tmp_path, "resumed", "resume=auto")  # the user's own config still says 32 x 1
    assert seen == [8] * 4  # step 4 in 4 micro-batches
    assert "resuming with a micro-batch of 8 x gradient accumulation 4" in caplog.text
    saved = yaml.safe_load((resumed / "config.yaml").read_text())["training"]
    assert (saved["per_device_train_batch_size"], saved["gradient_accumulation_steps"]) == (8, 4)
    untimed = [[{k: v for k, v in r.items() if k != "time"} for r in records(d)] for d in (resumed, full)]
    assert untimed[0] == untimed[1]
    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_out_of_memory_at_a_micro_batch_of_one_says_what_to_change(config32, out_of_memory_above):
    out_of_memory_above(0, error=lambda message: RuntimeError(f"CUDA error: {message}"))
    with pytest.raises(tunesmith.TunesmithError, match="at a micro-batch of 1: not even one example fits; freeze more "
                                                       "layer groups"):
        tunesmith.finetune(config32, quiet=True)


def test_out_of_memory_in_evaluation_shrinks_only_the_evaluation_batch(config32, tmp_path, out_of_memory_above, caplog):
    config32["training"]["per_device_eval_batch_size"] = 32
    reference = run(config32, tmp_path, "reference")
    out_of_memory_above(8, training=False)
    shrunk = run(config32, tmp_path, "shrunk")
    assert [r["train_loss"] for r in records(shrunk, "train")] == [r["train_loss"] for r in records(reference, "train")]
    a, b = weights(reference), weights(shrunk)
    assert all(torch.equal(a[k], b[k]) for k in a)
    evals = [(r["step"], r["accuracy"]) for r in records(shrunk) if r["phase"] != "train"]
    assert evals == [(r["step"], r["accuracy"]) for r in records(reference) if r["phase"] != "train"]
    assert [r["loss"] for r in records(shrunk, "eval")] == pytest.approx([r["loss"] for r in records(reference, "eval")],
                                                                         rel=1e-5)
    assert "out of memory in evaluation at a batch of 32: evaluating with batches of 16" in caplog.text
    saved = yaml.safe_load((shrunk / "config.yaml").read_text())["training"]
    assert saved["per_device_train_batch_size"] == 32
