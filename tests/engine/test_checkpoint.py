"""Checkpoints: the retention rule never deletes the one just written, the interrupt message names
only a checkpoint on disk, and a state.json from another version is one clear error."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

import tunesmith
from tunesmith.config import load_config
from tunesmith.errors import CheckpointError, TrainingInterrupted
from tunesmith.engine.checkpoint import MANIFEST, checkpoints, find_resume_point, save_checkpoint, verify


def _parts():
    model = nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


@pytest.mark.parametrize("keep", [0, 1])
def test_the_checkpoint_just_written_is_never_deleted_by_retention(tmp_path, keep):
    model, optimizer, scheduler = _parts()
    save_checkpoint(tmp_path, model, optimizer, scheduler, {"global_step": 1}, keep=5)
    path = save_checkpoint(tmp_path, model, optimizer, scheduler, {"global_step": 2}, keep=keep)
    assert path.is_dir() and [p.name for p in checkpoints(tmp_path)] == ["step-2"]
    verify(path)


def test_sigterm_names_only_a_checkpoint_that_exists(tiny_config):
    config = load_config(tiny_config)
    # save_total_limit 0 is refused by the config; the engine must be safe even so.
    config.training = config.training.model_copy(update={"save_total_limit": 0, "save_steps": None})

    def sigterm_at_step_3(record):
        if record["phase"] == "train" and record["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match=r"SIGTERM received: stopped after step 3; saved \S*step-3\.") as err:
        tunesmith.finetune(config, quiet=True, on_record=sigterm_at_step_3)
    assert err.value.exit_code == 143
    run_dir = config.output_dir
    assert find_resume_point(Path(run_dir) / "checkpoints", "auto").name == "step-3"


def _rehash(checkpoint) -> None:
    """Rewrites the checkpoint's manifest, as another tunesmith version would have written it."""
    hashes = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(checkpoint.iterdir()) if p.name != MANIFEST}
    (checkpoint / MANIFEST).write_text(json.dumps(hashes))


def test_a_state_json_with_an_unknown_key_is_one_clear_error(tiny_config, tmp_path):
    tiny_config["training"].update(max_steps=2, save_steps=2)
    tunesmith.finetune(tiny_config, quiet=True)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-2"
    state = json.loads((checkpoint / "state.json").read_text())
    (checkpoint / "state.json").write_text(json.dumps({**state, "ema_decay": 0.99}))
    _rehash(checkpoint)
    with pytest.raises(CheckpointError, match=r"step-2/state.json has key\(s\) 'ema_decay' .*another version"):
        tunesmith.finetune(tiny_config, ["resume=auto"], quiet=True)


def test_a_run_that_saved_no_best_model_names_none(tiny_config, monkeypatch, capsys):
    from tunesmith._cli_tables import print_before_after
    from tunesmith.engine import loop

    monkeypatch.setattr(loop, "improved", lambda entry, state, *args: False)  # no evaluation ever improves
    tiny_config["training"].update(max_steps=2)
    result = tunesmith.finetune(tiny_config, quiet=True)
    assert not (result.run_dir / "best").exists() and result.best_model_dir is None
    print_before_after(result)
    out = capsys.readouterr().out
    assert "no best model was saved" in out and f"{result.run_dir}/best" not in out.replace("\n", "")


def test_max_steps_below_one_trains_nothing_and_names_no_best(tiny_config):
    config = load_config(tiny_config)
    # max_steps < 1 is refused by the config; the engine must be safe even so.
    config.training = config.training.model_copy(update={"max_steps": -5})
    result = tunesmith.finetune(config, quiet=True)
    assert result.best_model_dir is None and result.best_step is None
    assert not (result.run_dir / "best").exists()
