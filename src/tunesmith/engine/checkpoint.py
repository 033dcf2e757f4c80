"""Checkpoints and the best model, written atomically so a crash never leaves a half-written one.

Each folder is written under a temporary name, its files fsynced, then renamed into place; a
folder that exists under its final name is therefore complete. Step checkpoints hold the weights
(safetensors), optimizer and scheduler state and a JSON of the loop state.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yields a temporary folder; on success it replaces `final` in one rename."""
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                with path.open("rb") as f:
                    os.fsync(f.fileno())
        old = final.parent / f"{TMP_PREFIX}{final.name}-old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(folder: Path) -> None:
    """Deletes temporary folders left by a crash in an earlier run."""
    for path in folder.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(folder: Path, model: nn.Module, optimizer, scheduler, state: dict[str, Any], keep: int) -> Path:
    """Writes `folder/step-N` and deletes the oldest step checkpoints beyond `keep`."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{state['global_step']}"
    with atomic_folder(final) as tmp:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(_untie(weights), tmp / "model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
    steps = sorted(folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    for old in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _untie(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (tied embeddings): store copies.
    seen: set[int] = set()
    out = {}
    for k, v in weights.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out
