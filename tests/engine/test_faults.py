"""Faults inside a run: non-finite losses, disk full and crashes while saving, malicious weights."""

from __future__ import annotations

import errno
import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

import tunesmith
from tunesmith.engine import checkpoint as checkpoint_module
from tunesmith.tasks.text_classification import TextClassificationTask


@pytest.fixture
def nan_at_call(monkeypatch):
    """Makes the training loss NaN on the given calls of the task's loss (counting from 1)."""

    def install(*calls: int):
        original = TextClassificationTask.loss
        count = {"n": 0}

        def poisoned(self, model, batch):
            loss, logits = original(self, model, batch)
            if model.training:
                count["n"] += 1
                if count["n"] in calls:
                    loss = loss * float("nan")
            return loss, logits

        monkeypatch.setattr(TextClassificationTask, "loss", poisoned)

    return install


def all_finite(path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(str(path)).values())


def test_nan_loss_stops_with_the_rows_and_keeps_weights_finite(tiny_config, nan_at_call):
    tiny_config["training"].update(save_steps=2, save_total_limit=5)
    nan_at_call(9)
    with pytest.raises(tunesmith.TunesmithError) as err:
        tunesmith.finetune(tiny_config, quiet=True)
    message = str(err.value)
    assert "became NaN/inf at step 9" in message and "last good checkpoint: step-8" in message
    run = tiny_config["output_dir"]
    report = json.loads(open(f"{run}/bad_batches.json").read().splitlines()[0])
    assert report["step"] == 9 and len(report["lines"]) == 16  # one batch of 16 rows, by file line
    for folder in ("best", "checkpoints/step-8"):
        assert all_finite(f"{run}/{folder}/model.safetensors")


def test_nan_policy_skip_counts_and_continues(tiny_config, nan_at_call):
    tiny_config["training"].update(nan_policy="skip", max_nan_skips=3)
    nan_at_call(2, 5)
    result = tunesmith.finetune(tiny_config, quiet=True)
    assert result.final["nan_skips"] == 2 and math.isfinite(result.final["loss"])
    assert all_finite(result.run_dir / "best" / "model.safetensors")


def test_nan_policy_skip_stops_past_the_limit(tiny_config, nan_at_call):
    tiny_config["training"].update(nan_policy="skip", max_nan_skips=1)
    nan_at_call(2, 3)
    with pytest.raises(tunesmith.TunesmithError, match="more than max_nan_skips=1"):
        tunesmith.finetune(tiny_config, quiet=True)


def test_disk_full_while_saving_names_the_last_good_checkpoint(tiny_config, monkeypatch):
    tiny_config["training"].update(save_steps=2, save_total_limit=5)
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the optimizer file of the second checkpoint (step 4)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(tunesmith.RunDirError, match="disk full while writing .*step-4.*last good checkpoint: step-2"):
        tunesmith.finetune(tiny_config, quiet=True)
    checkpoints = os.listdir(f"{tiny_config['output_dir']}/checkpoints")
    assert checkpoints == ["step-2"]  # no partial folder


def test_exception_while_pickling_leaves_the_previous_checkpoint_intact(tiny_config, monkeypatch):
    tiny_config["training"].update(save_steps=2, save_total_limit=5)
    real_save = torch.save
    calls = {"n": 0}

    class Poison:
        def __reduce__(self):
            raise RuntimeError("poison object")

    def poisoned_save(obj, path, *args, **kwargs):
        calls["n"] += 1
        return real_save(Poison() if calls["n"] == 3 else obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", poisoned_save)
    with pytest.raises(RuntimeError, match="poison object"):
        tunesmith.finetune(tiny_config, quiet=True)
    run = tiny_config["output_dir"]
    assert os.listdir(f"{run}/checkpoints") == ["step-2"]
    checkpoint_module.verify(checkpoint_module.checkpoints(__import__("pathlib").Path(run) / "checkpoints")[0])
    monkeypatch.undo()
    result = tunesmith.finetune(tiny_config, ["resume=auto"], quiet=True)  # resumes from step-2
    assert result.final["accuracy"] is not None


def test_stale_temporary_folders_are_removed_at_the_next_start(tiny_config, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / ".tmp-step-7-12345").mkdir(parents=True)
    (run / ".tmp-best-12345").mkdir()
    tunesmith.finetune(tiny_config, ["resume=auto"], quiet=True)
    assert not list(run.glob(".tmp-*")) and not list((run / "checkpoints").glob(".tmp-*"))


def test_malicious_pickle_weights_are_refused_without_running_code(tiny_bert, tiny_config, tmp_path):
    import shutil

    folder = tmp_path / "evil-model"
    shutil.copytree(tiny_bert, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"bert.embeddings.word_embeddings.weight": Payload()}, folder / "pytorch_model.bin")
    tiny_config["model"]["source"] = str(folder)
    with pytest.raises(tunesmith.ModelSourceError, match="refused to load the weights .* safetensors"):
        tunesmith.finetune(tiny_config, quiet=True)
    assert not marker.exists()
