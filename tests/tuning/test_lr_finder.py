"""The learning-rate range test: the suggestion rule on a known curve, and a real sweep on the tiny BERT
that writes only its plot and JSON and keeps the discriminative ratios between layer groups."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.tuning.lr_finder import smooth, suggest


def test_the_suggestion_is_the_steepest_fall_before_the_minimum():
    lrs = [10 ** (-6 + 6 * i / 99) for i in range(100)]
    # falls fastest at 1e-3 (a logistic step in log10(lr)), lowest near 1e-2, then blows up
    losses = [1.0 - 0.8 / (1 + math.exp(-4 * (math.log10(lr) + 3))) + (5 * (lr - 1e-2) if lr > 1e-2 else 0)
              for lr in lrs]
    steepest, lowest = suggest(lrs, smooth(losses, beta=0.0))
    assert steepest == pytest.approx(1e-3, rel=0.2)
    assert 5e-3 < lowest < 2e-2


def test_a_loss_that_never_falls_gives_no_suggestion():
    lrs = [10 ** (-6 + i / 10) for i in range(40)]
    assert suggest(lrs, [1.0 + i * 0.01 for i in range(40)])[0] is None


def test_range_test_on_the_tiny_bert(tiny_config, tmp_path, monkeypatch):
    import yaml

    from tunesmith.tuning import lr_finder

    rates_seen = []
    real_step = lr_finder._step

    def step(task, model, optimizer, *args):
        rates_seen.append({g["group_name"]: g["lr"] for g in optimizer.param_groups})
        return real_step(task, model, optimizer, *args)

    monkeypatch.setattr(lr_finder, "_step", step)
    tiny_config["strategy"] = {"freeze": 1, "layer_lr_decay": 0.5}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    result = CliRunner().invoke(app, ["lr-find", str(config), "--steps", "40", "--start-lr", "1e-5",
                                      "--end-lr", "10"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "run" / "lr_find"
    assert "suggested learning rate" in result.output and str(folder / "lr_find.png") in "".join(result.output.split())
    assert sorted(p.relative_to(tmp_path / "run").as_posix() for p in (tmp_path / "run").rglob("*")) == [
        "lr_find", "lr_find/lr_find.json", "lr_find/lr_find.png"]  # nothing else in the run folder
    assert (folder / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    found = json.loads((folder / "lr_find.json").read_text())
    lrs = found["lrs"]
    assert lrs[0] == pytest.approx(1e-5) and all(b > a for a, b in zip(lrs, lrs[1:]))
    assert len(found["losses"]) == len(lrs) <= 40
    for seen, lr in zip(rates_seen, lrs):  # every step keeps the discriminative ratios
        assert seen["head"] == pytest.approx(lr) and seen["block.1"] == pytest.approx(lr * 0.5)
        assert seen["block.0"] == pytest.approx(lr * 0.25) and seen["embeddings"] == pytest.approx(lr * 0.125)
    rates = found["group_rates"]
    assert list(rates) == ["embeddings", "block.0", "block.1", "head"]
    assert rates["embeddings"] is None  # frozen: freeze 1
    head = found["suggested_lr"] or 1.0
    if found["suggested_lr"] is not None:
        assert rates["head"] == pytest.approx(head)
        assert rates["block.1"] == pytest.approx(head * 0.5) and rates["block.0"] == pytest.approx(head * 0.25)
    assert any("training rows" in note for note in found["warnings"])  # 86 rows: flagged as unreliable


def test_the_sweep_trains_the_lora_model_the_fine_tune_trains(tiny_config, monkeypatch):
    """The range test is for the run as configured: under lora.enabled, only adapters and the new head train."""
    from tunesmith.tuning import lr_finder

    trained = []
    real_step = lr_finder._step

    def step(task, model, optimizer, *args):
        trained.append({n for n, p in model.named_parameters() if p.requires_grad})
        return real_step(task, model, optimizer, *args)

    monkeypatch.setattr(lr_finder, "_step", step)
    tiny_config["lora"] = {"enabled": True, "r": 4, "alpha": 8}
    tiny_config["output_dir"] = str(tiny_config["output_dir"]) + "-lora"
    lr_finder.lr_find(tiny_config, steps=10, start_lr=1e-5, end_lr=1e-2)
    assert trained and all(n and all("lora_" in p or ".modules_to_save." in p for p in n) for n in trained)
