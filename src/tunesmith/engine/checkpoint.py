"""Checkpoints and the best model, written atomically and verified before they are trusted.

Each folder is written under a temporary name, its files fsynced, then renamed into place, so a
folder under its final name is complete. A step checkpoint holds the weights (safetensors), the
optimizer and scheduler state (loaded back with `weights_only`), a JSON of the loop state and
random generators, and last a manifest of SHA-256 hashes: a checkpoint whose files do not match
its manifest (truncated, flipped bytes, half-copied) is never resumed from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunesmith.engine.write_errors import write_failure
from tunesmith.errors import CheckpointError, RunDirError

log = logging.getLogger("tunesmith")

TMP_PREFIX = ".tmp-"
MANIFEST = "manifest.json"


@contextlib.contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yields a temporary folder; on success it replaces `final` in one rename.

    Raises:
        RunDirError: the disk filled up or the folder cannot be written (whichever writer noticed:
            see engine/write_errors.py); `final` is untouched.
    """
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
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
    except BaseException as exc:
        reason = write_failure(exc, final.parent)  # before the partial folder is removed and frees space
        shutil.rmtree(tmp, ignore_errors=True)
        if reason is None:
            raise
        raise RunDirError(f"{reason} while writing {final}; {final.name} was left as it was before") from None


def remove_stale_temporaries(folder: Path) -> None:
    """Deletes temporary folders left by a crash in an earlier run (here and in checkpoints/)."""
    for parent in (folder, folder / "checkpoints"):
        for path in parent.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(folder: Path, model: nn.Module, optimizer, scheduler, state: dict[str, Any], keep: int,
                    weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Writes `folder/step-N` and deletes the oldest step checkpoints beyond `keep`. `weights`: the
    model's full state dict when processes hold only shards of it (engine/sharding.py).

    Raises:
        RunDirError: disk full or unwritable; the message names the last good checkpoint.
    """
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{state['global_step']}"
    try:
        with atomic_folder(final) as tmp:
            save_file(_untie(checkpoint_weights(model, weights)), tmp / "model.safetensors")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
            hashes = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
            (tmp / MANIFEST).write_text(json.dumps(hashes, indent=1), encoding="utf-8")
    except RunDirError as exc:
        last = checkpoints(folder)
        raise RunDirError(f"{exc}; last good checkpoint: {last[0].name if last else 'none'}") from None
    # The checkpoint just written is never deleted, whatever `keep` says (0 must not delete them all).
    for old in checkpoints(folder)[max(keep, 1):]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_weights(model: nn.Module, weights: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The weights a step checkpoint keeps: all of them, or under LoRA only the adapters and the fully
    trained heads (`modules_to_save`). A LoRA run's frozen base never changes and is rebuilt from
    `model.source` on resume, so its checkpoints are megabytes, not the whole model, and writing one
    does not serialize a second copy of the model in memory. `weights`: the full state dict gathered
    from sharded processes, used instead of the model's own (which would hold this process's shard)."""
    weights = model.state_dict() if weights is None else weights
    if hasattr(model, "peft_config"):
        # "lora_": adapter weights and DoRA magnitudes (a str; torch types Module.__getattr__ as Tensor | Module)
        prefix: str = model.base_model.prefix  # type: ignore[union-attr, assignment]
        weights = {k: v for k, v in weights.items() if prefix in k or ".modules_to_save." in k}
    return {k: v.detach().contiguous().cpu() for k, v in weights.items()}


def checkpoints(folder: Path) -> list[Path]:
    """Complete step checkpoints in `folder`, newest first."""
    found = [p for p in folder.glob("step-*") if p.is_dir() and p.name.split("-")[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def latest(folder: Path) -> Path | None:
    """The newest complete step checkpoint in `folder`, or None."""
    found = checkpoints(folder)
    return found[0] if found else None

def verify(path: Path) -> None:
    """Raises CheckpointError naming the first file that is missing or does not match its hash."""
    manifest = path / MANIFEST
    if not manifest.exists():
        raise CheckpointError(f"{path} has no {MANIFEST}: it is incomplete")
    try:
        hashes = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{manifest} is damaged") from None
    for name, digest in hashes.items():
        file = path / name
        if not file.exists():
            raise CheckpointError(f"{file} is missing")
        if _sha256(file) != digest:
            raise CheckpointError(f"{file} failed its hash check (truncated or corrupted)")


def find_resume_point(folder: Path, which: str) -> Path | None:
    """The checkpoint to resume from: `auto` = newest that verifies (older ones as fallback),
    or an explicit `step-N` / path, which must verify.

    Raises:
        CheckpointError: an explicit checkpoint is missing or corrupted.
    """
    if which != "auto":
        path = Path(which) if Path(which).is_dir() else folder / which
        if not path.is_dir():
            found = ", ".join(p.name for p in checkpoints(folder)) or "none"
            raise CheckpointError(f"checkpoint {which!r} not found in {folder}; available: {found}")
        verify(path)
        return path
    for path in checkpoints(folder):
        try:
            verify(path)
            return path
        except CheckpointError as exc:
            log.warning("%s; falling back to an older checkpoint", exc)
    return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Weights, optimizer and scheduler state and loop state of a verified checkpoint."""
    try:
        return {
            "weights": load_file(str(path / "model.safetensors")),
            # weights_only: a checkpoint file can never run code, even if someone swapped it.
            "optimizer": torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"),
            "scheduler": torch.load(path / "scheduler.pt", weights_only=True, map_location="cpu"),
            "state": json.loads((path / "state.json").read_text(encoding="utf-8")),
        }
    except Exception as exc:  # noqa: BLE001 - any failure here means a damaged checkpoint
        raise CheckpointError(f"cannot load checkpoint {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None


def check_state_keys(path: Path, state: dict[str, Any], known: set[str]) -> None:
    """Raises CheckpointError naming the keys of the checkpoint's `state.json` outside `known`."""
    unknown = sorted(set(state) - known)
    if unknown:
        raise CheckpointError(
            f"{path / 'state.json'} has key(s) {', '.join(map(repr, unknown))} that this tunesmith version does not "
            "know (the checkpoint was written by another version); resume it with the version that wrote it, "
            "or start a new run in another output_dir")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _untie(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (tied embeddings): store copies.
    seen: set[int] = set()
    out = {}
    for k, v in weights.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out
