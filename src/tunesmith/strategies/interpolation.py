"""WiSE-FT, a forgetting guard applied after training: weights interpolated between two runs.

Wortsman et al. 2022 ("Robust fine-tuning of zero-shot models") take the fine-tuned weights part of
the way back toward the ones it started from, theta = (1 - alpha) x start + alpha x tuned, which keeps much
of what the start knew at little cost to the new task; alpha is chosen on validation. Both runs must
hold the same architecture (a full `model.safetensors` each, the same keys and shapes): a LoRA run's
`best/` holds an adapter only and is refused, as is a head trained for other labels.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"


def mismatch(start: Path, tuned: Path) -> str | None:
    """Why the `best/` weights of two run directories cannot be interpolated, or None when they can."""
    first, second = start / "best" / WEIGHTS, tuned / "best" / WEIGHTS
    for path in (first, second):
        if not path.is_file():
            return f"{path.parent} holds no {WEIGHTS} (a LoRA adapter, or no best model)"
    a, b = load_file(str(first)), load_file(str(second))
    if a.keys() != b.keys():
        return f"{first} and {second} hold different weights ({sorted(a.keys() ^ b.keys())[:3]} ...)"
    shapes = [k for k in a if a[k].shape != b[k].shape]
    return (f"weights of different shapes ({shapes[:3]}): a head for other labels, or a recommender's tables grown "
            "for new users or items (no parent value to mix the new rows with)") if shapes else None


def interpolate(start: Path, tuned: Path, alpha: float, out: Path) -> Path:
    """Writes `out`, a run-directory-like folder (the tuned run's `config.yaml` and `best/`) whose
    weights are (1 - alpha) x start's + alpha x tuned's; integer tensors (position ids) are tuned's."""
    a, b = load_file(str(start / "best" / WEIGHTS)), load_file(str(tuned / "best" / WEIGHTS))
    mixed = {k: torch.lerp(a[k].float(), b[k].float(), alpha).to(b[k].dtype) if b[k].is_floating_point() else b[k]
             for k in b}
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(tuned / "best", out / "best")
    shutil.copy(tuned / "config.yaml", out / "config.yaml")
    save_file(mixed, str(out / "best" / WEIGHTS), metadata={"format": "pt"})  # transformers reads the format
    return out
