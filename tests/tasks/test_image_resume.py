"""Kill and resume for images: `kill -9` mid-epoch with the `strong` augmentation preset, mixup and
cutmix, shuffling and two loader workers; the resumed run's curve and weights are bitwise the same
as a run that never stopped (augmentation draws are keyed on seed, epoch and index, not on workers)."""

from __future__ import annotations

import json
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


def start(config: dict, path) -> subprocess.Popen:
    path.write_text(yaml.safe_dump(config))
    code = f"import tunesmith; tunesmith.finetune({str(path)!r}, quiet=True)"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(run_dir, step: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline, metrics = time.time() + timeout, run_dir / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.exists() and any(json.loads(l)["step"] >= step for l in metrics.read_text().splitlines() if l.strip()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {proc.stderr.read()}")
        time.sleep(0.005)
    raise AssertionError(f"step {step} not reached in {timeout} s")


@pytest.fixture
def augmented_image_config(color_images, tmp_path) -> dict:
    """A random-init timm test network (100k parameters, BatchNorm) on the synthetic photos at 48 px."""
    return {
        "task": "image-classification",
        "model": {"source": "test_efficientnet", "pretrained": False},
        "data": {"train": str(color_images), "validation_split": 0.25}, "image_classification": {"image_size": 48},
        "augmentation": {"preset": "strong", "mixup_alpha": 0.4, "cutmix_alpha": 1.0},
        "training": {"num_train_epochs": 4, "per_device_train_batch_size": 6, "learning_rate": 5e-3,
                     "logging_steps": 1, "save_steps": 1, "save_total_limit": 2, "dataloader_num_workers": 2,
                     "early_stopping_patience": None},
        "strategy": {"gradual_unfreezing": True, "layer_lr_decay": 0.7},
    }


@pytest.mark.slow  # about a minute on two cores: three runs, one in a subprocess
def test_sigkill_mid_epoch_then_resume_is_identical_for_images(augmented_image_config, tmp_path):
    reference = tunesmith.finetune({**augmented_image_config, "output_dir": str(tmp_path / "reference")},
                                   quiet=True).run_dir
    steps = max(c[1] for c in curve(reference))
    config = {**augmented_image_config, "output_dir": str(tmp_path / "killed")}
    proc = start(config, tmp_path / "killed.yaml")
    wait_for_step(tmp_path / "killed", 5, proc)  # 3 steps per epoch: mid-epoch 2, after an unfreeze
    proc.kill()
    proc.wait()
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert not any('"final"' in line for line in lines)
    result = tunesmith.finetune(config, ["resume=auto"], quiet=True)
    after = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert after[0] == lines[0] and '"baseline"' in lines[0]  # continued from a checkpoint, not started afresh
    assert curve(result.run_dir) == curve(reference)
    a, b = (load_file(str(run / "best" / "model.safetensors")) for run in (reference, result.run_dir))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert steps == 12 and max(c[1] for c in curve(result.run_dir)) == 12
