"""Two-process DDP on CPU (gloo) through `accelerate launch` matches a single-process run with the
same effective batch, with frozen groups and gradual unfreezing (no unused-parameter errors)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tunesmith

pytestmark = pytest.mark.slow


def records(run_dir: Path, phase: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["phase"] == phase]


def test_two_process_ddp_matches_one_process(tiny_config, tiny_bert, tmp_path):
    tiny_config["training"].update(num_train_epochs=3, early_stopping_patience=None, learning_rate=3e-3)
    tiny_config["strategy"] = {"freeze": 1, "gradual_unfreezing": True, "layer_lr_decay": 0.8}
    tiny_config["model"]["dropout"] = 0.0  # dropout masks are drawn per process, so they cannot match
    single = tunesmith.finetune(tiny_config, quiet=True).run_dir

    config = {**tiny_config, "output_dir": str(tmp_path / "ddp")}
    config["training"] = {**config["training"], "per_device_train_batch_size": 8, "per_device_eval_batch_size": 32}
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    proc = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tunesmith.cli", "train", str(path),
                           "--quiet"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = tmp_path / "ddp"

    a, b = records(single, "train"), records(ddp, "train")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4, abs=1e-5)
    assert [r["trainable_groups"] for r in records(ddp, "eval")] == [r["trainable_groups"] for r in records(single, "eval")]
    assert records(ddp, "final")[0]["accuracy"] == pytest.approx(records(single, "final")[0]["accuracy"])

    original = load_file(str(tiny_bert / "model.safetensors"))
    one, two = load_file(str(single / "best" / "model.safetensors")), load_file(str(ddp / "best" / "model.safetensors"))
    for key, value in two.items():
        if key.startswith("bert.embeddings."):  # frozen throughout: bit-identical
            assert torch.equal(value, original[key]), key
        assert torch.allclose(value, one[key], atol=1e-4), key
