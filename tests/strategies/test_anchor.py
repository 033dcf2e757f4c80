"""strategy.l2_sp: the pull toward the starting weights after each step, and what it keeps."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.errors import ConfigError
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.strategies.anchor import Anchor


def test_each_step_moves_a_weight_lr_times_strength_back_toward_its_start_but_not_a_new_heads():
    body, head = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    groups = [LayerGroup("block.0", [], [("w", body)]), LayerGroup("head", [], [("h", head)])]
    anchor = Anchor(groups, strength=2.0, fresh_head=True)
    optimizer = torch.optim.SGD([{"params": [body], "lr": 0.1}, {"params": [head], "lr": 0.1}])
    with torch.no_grad():
        body.add_(1.0)  # as if a step had moved both to 2.0
        head.add_(1.0)
    anchor.pull(optimizer)
    torch.testing.assert_close(body.detach(), torch.full((3,), 1.8))  # 2 - 0.1 x 2 x (2 - 1)
    torch.testing.assert_close(head.detach(), torch.full((2,), 2.0))


def distance(run_dir, start) -> float:
    best = load_file(str(run_dir / "best" / "model.safetensors"))
    return sum(float((best[k] - v).norm()) for k, v in start.items() if k in best and "classifier" not in k)


def test_a_run_with_l2_sp_stays_nearer_its_pre_trained_weights(tiny_config, tiny_bert, tmp_path):
    from tunesmith.run import finetune

    start = load_file(str(tiny_bert / "model.safetensors"))
    free = finetune({**tiny_config, "output_dir": str(tmp_path / "free")}, quiet=True)
    held = finetune({**tiny_config, "output_dir": str(tmp_path / "held"), "strategy": {"l2_sp": 500.0}}, quiet=True)
    assert distance(held.run_dir, start) < 0.5 * distance(free.run_dir, start)


def test_l2_sp_is_refused_where_weights_are_sharded():
    from tunesmith.config import load_config
    from tunesmith.strategies.anchor import anchor_weights

    config = load_config({"strategy": {"l2_sp": 1.0}})
    with pytest.raises(ConfigError, match="strategy.l2_sp: not available when the weights are sharded"):
        anchor_weights(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1), [], config, None, sharded=True)
