"""Every shipped `accelerate launch` config loads in Accelerate's own config parser."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "examples" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_accelerate_config_parses(path):
    config = load_config_from_file(str(path))
    assert config.num_processes >= 2
    if config.distributed_type.name == "FSDP":
        # per-group learning rates and frozen groups need the original parameters
        assert config.fsdp_config["fsdp_use_orig_params"] is True


def test_configs_are_shipped():
    assert {p.stem for p in CONFIGS} == {"ddp", "fsdp", "deepspeed"}
