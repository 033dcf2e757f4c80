"""Random-number state: captured into checkpoints as JSON (no pickle) and restored on resume.

Restoring the Python, NumPy and torch generators at a checkpoint makes dropout and every other
random draw after a resume the same as in a run that was never interrupted.
"""

from __future__ import annotations

import base64
import random
from typing import Any, cast

import numpy as np
import torch


def capture_rng() -> dict[str, Any]:
    version, state, gauss = random.getstate()
    # The global generator is MT19937, whose legacy state is this tuple (numpy types it tuple | dict).
    kind, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    captured = {
        "python": [version, list(state), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        captured["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return captured


def restore_rng(captured: dict[str, Any]) -> None:
    version, state, gauss = captured["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = captured["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(captured["torch"]))
    if "cuda" in captured and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in captured["cuda"]])


def _b64(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()
