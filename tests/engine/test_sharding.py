"""Sharded weights (engine/sharding.py): `best/` and checkpoints gathered on every process and
written from the full state dict, `best/` restored into a sharded model, and gradient norms as
DeepSpeed returns them (a float or None).

Accelerate refuses FSDP without a GPU (docs/scaling.md), but torch shards on CPU: the two-process
test wraps the tiny model in torch's own FSDP (FULL_SHARD) over gloo and tells the Accelerator it
runs FSDP, so `get_state_dict` takes its real FSDP branch and its collectives really run.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors.torch import load_file

import tunesmith
from tunesmith.engine import sharding
from tunesmith.errors import CheckpointError, NonFiniteLossError


@pytest.mark.parametrize("norm", [None, 1.5])
def test_a_deepspeed_float_or_none_grad_norm_trains(tiny_config, monkeypatch, norm):
    monkeypatch.setattr(Accelerator, "clip_grad_norm_", lambda self, parameters, max_norm, norm_type=2: norm)
    tiny_config["training"]["max_steps"] = 2
    result = tunesmith.finetune(tiny_config, quiet=True)
    assert result.best_step is not None


def test_a_non_finite_float_grad_norm_stops_the_run(tiny_config, monkeypatch):
    monkeypatch.setattr(Accelerator, "clip_grad_norm_", lambda self, parameters, max_norm, norm_type=2: math.inf)
    with pytest.raises(NonFiniteLossError, match="at step 1"):
        tunesmith.finetune(tiny_config, quiet=True)


def test_finite_norm_keeps_a_tensor_on_its_device():
    assert isinstance(sharding.finite_norm(torch.tensor(2.0)), torch.Tensor)
    assert not bool(sharding.finite_norm(torch.tensor(float("nan"))))
    assert sharding.finite_norm(None) is True and sharding.finite_norm(float("nan")) is False


def test_best_and_checkpoints_are_written_from_the_gathered_state_dict(tiny_config, monkeypatch):
    """The loop asks Accelerate for the state dict (a collective under FSDP) and writes what it returns."""
    calls = []

    def gathered(self, model, unwrap=True):
        calls.append(type(model).__name__)
        weights = {k: v.detach().clone() for k, v in self.unwrap_model(model).state_dict().items()}
        weights["classifier.bias"].fill_(0.125)  # a marker: only the gathered dict carries it
        return weights

    monkeypatch.setattr(sharding, "SHARDED", (DistributedType.NO,))  # this single process counts as sharded
    monkeypatch.setattr(Accelerator, "get_state_dict", gathered)
    tiny_config["training"].update(num_train_epochs=1, save_steps=2, early_stopping_patience=None)
    run_dir = tunesmith.finetune(tiny_config, quiet=True).run_dir
    marker = torch.full((2,), 0.125)
    assert torch.equal(load_file(str(run_dir / "best" / "model.safetensors"))["classifier.bias"], marker)
    saved = sorted((run_dir / "checkpoints").glob("step-*"))
    assert saved and all(torch.equal(load_file(str(p / "model.safetensors"))["classifier.bias"], marker) for p in saved)
    assert len(calls) >= 2  # at least one best/ and one checkpoint


def test_a_sharded_run_does_not_resume_from_a_checkpoint(tiny_config, monkeypatch):
    """Its optimizer.pt is one process's shard: the resume is refused, naming best/ to start from."""
    tiny_config["training"].update(max_steps=2, save_steps=2)
    run_dir = tunesmith.finetune(tiny_config, quiet=True).run_dir
    monkeypatch.setattr(sharding, "SHARDED", (DistributedType.NO,))
    with pytest.raises(CheckpointError, match=r"cannot resume from \S*step-2 .*optimizer state is one process's shard"
                                              r".*model.source: \S*best"):
        tunesmith.finetune(tiny_config, ["resume=auto", "training.max_steps=4"], quiet=True)
    assert not (run_dir / "checkpoints" / "step-4").exists()


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 2])
def test_two_process_fsdp_full_shard_on_cpu_writes_and_restores_best(tiny_config, tmp_path, version):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(Path(tunesmith.__file__).parents[1]),
                                                                 os.environ.get("PYTHONPATH", "")] if p)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               __file__, str(path), str(version)]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("fsdp worker ok") == 2, proc.stdout[-2000:]


def _fsdp_worker(config_path: str, version: int) -> None:
    """One process of the FSDP test: shard, shift every weight, write best/ and a checkpoint, restore."""
    from tunesmith.config import load_config
    from tunesmith.engine.checkpoint import save_checkpoint
    from tunesmith.tasks import get_task

    accelerator = Accelerator(cpu=True)  # the gloo group
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = SimpleNamespace(fsdp_version=version)
    config = load_config(config_path)
    task = get_task(config)
    task.preflight()
    torch.manual_seed(0)
    model = task.build_model()
    expected = {k: v.detach().clone() + 1.0 for k, v in model.state_dict().items()}
    model = _shard(model, version)
    with torch.no_grad():
        for p in model.parameters():  # this process's shard only: the full tensors move as a whole
            p.add_(1.0)
    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sharding.save_best(task, accelerator, model, run_dir)
    weights = sharding.gather_weights(accelerator, model)
    if accelerator.is_main_process:
        save_checkpoint(run_dir / "checkpoints", accelerator.unwrap_model(model), torch.optim.SGD([torch.zeros(1)]),
                        torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.zeros(1)]), lambda _: 1.0),
                        {"global_step": 1}, keep=1, weights=weights)
        for folder in (run_dir / "best", run_dir / "checkpoints" / "step-1"):
            _check(load_file(str(folder / "model.safetensors")), expected)
    accelerator.wait_for_everyone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(5.0)
    sharding.restore_best(accelerator, model, run_dir, task)
    restored = sharding.gather_weights(accelerator, model)
    if accelerator.is_main_process:
        _check(restored, expected)
    print("fsdp worker ok", flush=True)


def _shard(model: torch.nn.Module, version: int) -> torch.nn.Module:
    if version == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

        return FullyShardedDataParallel(model, device_id=torch.device("cpu"), use_orig_params=True,
                                        sharding_strategy=ShardingStrategy.FULL_SHARD)
    from torch.distributed.fsdp import fully_shard

    for layer in model.bert.encoder.layer:
        fully_shard(layer)
    return fully_shard(model)


def _check(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert saved, "no weights were written"
    for key, value in saved.items():
        assert value.shape == expected[key].shape, (key, value.shape, expected[key].shape)
        assert torch.allclose(value.float(), expected[key].float()), key


if __name__ == "__main__":
    _fsdp_worker(sys.argv[1], int(sys.argv[2]))
