"""The run's Accelerator (engine/accelerator.py): precision `auto`, sharding launches refused without GPUs,
no accumulation."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from tunesmith.config import load_config
import tunesmith
from tunesmith.engine.accelerator import cpu_bf16_units, make_accelerator, precision_choice, refuse_launched_accumulation
from tunesmith.errors import LaunchError


@pytest.mark.parametrize(("variable", "name"), [("ACCELERATE_USE_FSDP", "FSDP"),
                                                ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_fsdp_or_deepspeed_launched_without_gpus_is_one_clear_error(tiny_config, monkeypatch, variable, name):
    """Without it, FSDP fails inside Accelerate ("There are currently no available devices found")
    and DeepSpeed quietly trains plain DDP on the CPU process group."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(variable, "true")
    with pytest.raises(LaunchError, match=rf"{name} needs GPUs.*--multi_gpu --num_processes 2"):
        make_accelerator(load_config(tiny_config))


def test_the_loop_gets_an_accelerator_that_does_not_accumulate(tiny_config):
    """The loop counts micro-batches and scales the loss itself; Accelerate counting too would scale it twice."""
    config = load_config(tiny_config, ["training.gradient_accumulation_steps=4"])
    accelerator = make_accelerator(config)
    assert accelerator.gradient_accumulation_steps == 1 and accelerator.sync_gradients
    refuse_launched_accumulation(accelerator)
    with pytest.raises(LaunchError, match="set to accumulate 4 micro-batches .* tunesmith accumulates itself"):
        refuse_launched_accumulation(SimpleNamespace(gradient_accumulation_steps=4))


@pytest.mark.parametrize(("amx", "avx512_bf16", "expected"), [(True, True, "bf16"), (False, True, "bf16"),
                                                              (True, False, "bf16"), (False, False, "no")])
def test_auto_precision_is_bf16_only_on_a_cpu_with_bf16_matrix_instructions(tiny_config, monkeypatch, amx,
                                                                           avx512_bf16, expected):
    """The probe is faked both ways: the suite runs with TUNESMITH_CPU_BF16=0 (tests/conftest.py)."""
    monkeypatch.delenv("TUNESMITH_CPU_BF16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    config = load_config(tiny_config)
    choice, why = precision_choice(config)
    assert choice == expected and make_accelerator(config).mixed_precision == expected
    if expected == "bf16":
        assert ("AMX" in why) == amx and ("AVX512-BF16" in why) == avx512_bf16
    else:
        assert "no bf16 matrix instructions" in why
    # Set by hand, the key wins over the probe either way; one process can switch precision between runs
    # (Accelerate alone refuses: "AcceleratorState has already been initialized").
    for choice in ("no", "bf16", "no"):
        config = load_config(tiny_config, [f"training.mixed_precision={choice}"])
        assert precision_choice(config)[0] == choice == make_accelerator(config).mixed_precision


def test_a_torch_without_the_probes_counts_as_a_cpu_without_bf16(monkeypatch):
    monkeypatch.delenv("TUNESMITH_CPU_BF16")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert cpu_bf16_units() is None


def test_the_variable_overrides_the_probe_and_a_bad_value_is_named(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setenv("TUNESMITH_CPU_BF16", "0")
    assert cpu_bf16_units() is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setenv("TUNESMITH_CPU_BF16", "1")
    assert cpu_bf16_units() == "TUNESMITH_CPU_BF16=1"
    monkeypatch.setenv("TUNESMITH_CPU_BF16", "yes")
    with pytest.raises(LaunchError, match="TUNESMITH_CPU_BF16='yes': set it to 1 .*, 0 .* or unset it"):
        cpu_bf16_units()


def test_a_run_under_auto_on_a_bf16_cpu_trains_in_bf16_and_says_so(tiny_config, monkeypatch, caplog):
    """The run computes in bf16 for real (emulated where the CPU lacks the units), learns, and the
    log, model card and run summary name the precision and why."""
    monkeypatch.setenv("TUNESMITH_CPU_BF16", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seen = []
    linear_forward = torch.nn.Linear.forward

    def recording(self, x):
        out = linear_forward(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", recording)
    with caplog.at_level("INFO", logger="tunesmith"):
        result = tunesmith.finetune(tiny_config, quiet=True)
    assert torch.bfloat16 in seen
    assert "precision: bf16 autocast (auto: this CPU has bf16 matrix instructions (TUNESMITH_CPU_BF16=1)" in caplog.text
    assert result.final["loss"] < result.baseline["loss"]
    card = (result.run_dir / "README.md").read_text()
    assert re.search(r"in \d+ s \(\d+ s validating\), bf16 autocast", card), card

