"""strategies/interpolation.py: WiSE-FT weights between two runs, and what cannot be interpolated."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from tunesmith.strategies.interpolation import interpolate, mismatch


def run(tmp_path, name: str, weights: dict) -> object:
    folder = tmp_path / name
    (folder / "best").mkdir(parents=True)
    save_file(weights, str(folder / "best" / "model.safetensors"))
    (folder / "config.yaml").write_text(f"task: {name}\n")
    return folder


def test_weights_are_mixed_by_alpha_and_integer_tensors_kept(tmp_path):
    start = run(tmp_path, "start", {"w": torch.zeros(3), "ids": torch.arange(3)})
    tuned = run(tmp_path, "tuned", {"w": torch.full((3,), 4.0), "ids": torch.arange(3) + 1})
    assert mismatch(start, tuned) is None
    out = interpolate(start, tuned, 0.25, tmp_path / "mix")
    mixed = load_file(str(out / "best" / "model.safetensors"))
    torch.testing.assert_close(mixed["w"], torch.ones(3))
    assert mixed["ids"].tolist() == [1, 2, 3] and (out / "config.yaml").read_text() == "task: tuned\n"


def test_other_heads_and_adapters_are_named(tmp_path):
    start = run(tmp_path, "start", {"head": torch.zeros(2, 4)})
    tuned = run(tmp_path, "tuned", {"head": torch.zeros(3, 4)})
    assert "different shapes" in mismatch(start, tuned)
    (tmp_path / "adapter" / "best").mkdir(parents=True)
    assert "holds no model.safetensors" in mismatch(start, tmp_path / "adapter")
