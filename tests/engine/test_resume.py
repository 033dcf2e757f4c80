"""Kill and resume: a run killed mid-epoch and resumed gives the same curve and weights as one that
never stopped (shuffling on, gradual unfreezing and discriminative rates on, two loader workers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tunesmith


def curve(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["phase"], r["step"], r.get("train_loss"), r.get("loss"), r.get("accuracy")) for r in rows]


@pytest.fixture
def resumable_config(tiny_config, tmp_path):
    tiny_config["training"].update(num_train_epochs=5, save_steps=1, save_total_limit=2, dataloader_num_workers=2,
                                   early_stopping_patience=None, learning_rate=3e-3)
    tiny_config["strategy"] = {"gradual_unfreezing": True, "layer_lr_decay": 0.7}
    tiny_config["model"]["dropout"] = 0.2  # dropout draws from the RNG: resume must restore it
    return tiny_config


def start(config: dict, tmp_path, name: str) -> subprocess.Popen:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    code = f"import tunesmith; tunesmith.finetune({str(path)!r}, quiet=True)"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(run_dir, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.exists() and any(json.loads(l)["step"] >= step for l in metrics.read_text().splitlines() if l.strip()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {proc.stderr.read()}")
        time.sleep(0.005)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def assert_same_run(reference, resumed):
    assert curve(resumed) == curve(reference)
    a, b = load_file(str(reference / "best" / "model.safetensors")), load_file(str(resumed / "best" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def reference_run(resumable_config, tmp_path):
    config = {**resumable_config, "output_dir": str(tmp_path / "reference")}
    return tunesmith.finetune(config, quiet=True).run_dir


def test_sigkill_mid_epoch_then_resume_is_identical(resumable_config, reference_run, tmp_path):
    config = {**resumable_config, "output_dir": str(tmp_path / "killed")}
    run_dir = tmp_path / "killed"
    proc = start(config, tmp_path, "killed")
    wait_for_step(run_dir, 9, proc)  # epoch 2 of 5 (6 steps per epoch): mid-epoch, after an unfreeze
    proc.kill()
    proc.wait()
    assert not any('"final"' in line for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    result = tunesmith.finetune(config, ["resume=auto"], quiet=True)
    assert_same_run(reference_run, result.run_dir)
    assert not list(run_dir.glob(".tmp-*")) and not list((run_dir / "checkpoints").glob(".tmp-*"))


def test_sigterm_saves_a_checkpoint_and_exits_143(resumable_config, reference_run, tmp_path):
    config = {**resumable_config, "output_dir": str(tmp_path / "term")}
    config["training"] = {**config["training"], "save_steps": None}  # the checkpoint comes from SIGTERM
    run_dir = tmp_path / "term"
    path = tmp_path / "term.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "train", str(path), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(run_dir, 8, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "SIGTERM received" in err and "--resume" in err and "Traceback" not in err
    config["training"]["save_steps"] = 1  # a changed setting that does not alter the run
    result = tunesmith.finetune(config, ["resume=auto"], quiet=True)
    assert_same_run(reference_run, result.run_dir)


def test_resume_from_the_last_step_of_an_epoch_runs_the_next_epoch_in_full(resumable_config, tmp_path):
    import shutil

    config = {**resumable_config, "output_dir": str(tmp_path / "reference")}
    config["training"] = {**config["training"], "save_total_limit": 100}
    reference = tunesmith.finetune(config, quiet=True).run_dir
    resumed = tmp_path / "boundary"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(reference / "checkpoints" / "step-12", resumed / "checkpoints" / "step-12")  # end of epoch 2
    shutil.copytree(reference / "best", resumed / "best")
    shutil.copy(reference / "config.yaml", resumed / "config.yaml")
    kept = [line for line in (reference / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 12]
    (resumed / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    result = tunesmith.finetune({**config, "output_dir": str(resumed)}, ["resume=auto"], quiet=True)
    assert_same_run(reference, result.run_dir)
    assert max(c[1] for c in curve(result.run_dir)) == 30  # 5 epochs x 6 steps, none repeated or lost


def test_resuming_with_the_same_config_warns_of_no_change(tiny_config, caplog):
    """config.yaml holds tuples (a task's `scale_range`) as lists; they are the same values, no change."""
    tiny_config["training"].update(save_steps=2)
    tunesmith.finetune(tiny_config, ["training.max_steps=2"], quiet=True)
    tunesmith.finetune(tiny_config, ["training.max_steps=2", "resume=auto"], quiet=True)
    assert "resuming with a changed config" not in caplog.text


def test_resume_auto_without_checkpoints_starts_fresh(tiny_config):
    result = tunesmith.finetune(tiny_config, ["resume=auto"], quiet=True)
    assert result.final["accuracy"] is not None


def test_resume_refuses_other_labels(tiny_config, tmp_path):
    tunesmith.finetune(tiny_config, quiet=True)
    data = tmp_path / "three.csv"
    data.write_text("text,label\n" + "".join(f"row {i},{'abc'[i % 3]}\n" for i in range(60)))
    with pytest.raises(tunesmith.TunesmithError, match="is for 2 classes"):
        tunesmith.finetune(tiny_config, ["resume=auto", f"data.train={data}"], quiet=True)


def test_corrupted_newest_checkpoint_falls_back(tiny_config, caplog):
    tiny_config["training"].update(save_steps=1, save_total_limit=3)
    result = tunesmith.finetune(tiny_config, ["training.max_steps=5"], quiet=True)
    newest = result.run_dir / "checkpoints" / "step-5"
    data = (newest / "optimizer.pt").read_bytes()
    (newest / "optimizer.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(tunesmith.TunesmithError, match="optimizer.pt failed its hash check"):
        tunesmith.finetune(tiny_config, ["resume=step-5"], quiet=True)
    tunesmith.finetune(tiny_config, ["resume=auto"], quiet=True)
    assert "step-5/optimizer.pt failed its hash check (truncated or corrupted); falling back" in caplog.text


def test_a_second_live_run_on_the_same_folder_is_refused(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").write_text(str(os.getppid()))  # a live process holds it
    with pytest.raises(tunesmith.RunDirError, match="another tunesmith run"):
        tunesmith.finetune(tiny_config, quiet=True)
    (run_dir / ".lock").write_text("999999999")  # a dead process: taken over
    tunesmith.finetune(tiny_config, quiet=True)
    assert not (run_dir / ".lock").exists()


def test_sigint_saves_a_checkpoint_and_exits_130(resumable_config, tmp_path):
    config = {**resumable_config, "output_dir": str(tmp_path / "int")}
    config["training"] = {**config["training"], "save_steps": None}
    path = tmp_path / "int.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "train", str(path), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(tmp_path / "int", 4, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGINT received" in err and "Traceback" not in err
    assert list((tmp_path / "int" / "checkpoints").glob("step-*"))


def test_resume_applies_a_changed_learning_rate(tiny_config):
    tiny_config["training"].update(save_steps=2)
    tunesmith.finetune(tiny_config, ["training.max_steps=4"], quiet=True)
    # a new max_steps keeps the schedule comparable; the new peak rate must show up right away
    result = tunesmith.finetune(tiny_config, ["resume=auto", "training.max_steps=4", "training.learning_rate=1e-1"],
                                quiet=True)
    assert result.final is not None
    state = json.loads((result.run_dir / "checkpoints" / "step-4" / "state.json").read_text())
    assert state["global_step"] == 4


def test_resume_in_another_precision_warns_and_names_the_one_it_started_in(tiny_config, caplog):
    """`mixed_precision: auto` picks by the machine: a run resumed on a CPU without bf16 units (or with them)
    would switch precision silently."""
    tiny_config["training"].update(save_steps=2)
    tunesmith.finetune(tiny_config, ["training.max_steps=2", "training.mixed_precision=no"], quiet=True)
    with caplog.at_level("WARNING", logger="tunesmith"):
        result = tunesmith.finetune(tiny_config, ["resume=auto", "training.max_steps=4", "training.mixed_precision=bf16"],
                                    quiet=True)
    assert "was trained in fp32 and this run continues in bf16 autocast" in caplog.text
    assert "set training.mixed_precision: no to continue as it started" in caplog.text
    state = json.loads((result.run_dir / "checkpoints" / "step-4" / "state.json").read_text())
    assert state["precision"] == "bf16"


def test_resume_refuses_another_backbone(tiny_config, tmp_path):
    tiny_config["training"].update(save_steps=2)
    tunesmith.finetune(tiny_config, ["training.max_steps=2"], quiet=True)
    with pytest.raises(tunesmith.TunesmithError, match="model.source changed"):
        tunesmith.finetune(tiny_config, ["resume=auto", "model.source=demo:minilm"], quiet=True)
