"""The run directory: checked before training, locked while a run uses it, and compared on resume."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tunesmith.config import RunConfig
from tunesmith.engine.checkpoint import remove_stale_temporaries
from tunesmith.errors import CheckpointError, RunDirError

log = logging.getLogger("tunesmith")

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "best", "checkpoints")
LOCK = ".lock"
# Keys whose change makes a checkpoint meaningless for the new config.
FIXED_ON_RESUME = ("task", "model.source", "data.label_column", "data.text_column", "data.text_pair_column")
# Keys whose change moves the position in the data: the interrupted epoch restarts. So does a new
# effective batch (micro-batch x accumulation): the batch order depends on it alone (engine/batching.py).
BATCHING_KEYS = ("data.train", "data.max_train_samples", "training.seed")
EFFECTIVE_BATCH = ("training.per_device_train_batch_size", "training.gradient_accumulation_steps")


def prepare_run_dir(path: str | Path, overwrite: bool, resuming: bool = False) -> Path:
    """Creates the run directory and proves it is writable, before any heavy work.

    Raises:
        RunDirError: it holds an earlier run (and neither `overwrite` nor resuming), or it
            cannot be written.
    """
    run_dir = Path(path)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"output_dir {run_dir} is a file; choose a directory path")
    earlier = [m for m in RUN_MARKERS if (run_dir / m).exists()]
    if earlier and not (overwrite or resuming):
        raise RunDirError(
            f"output_dir {run_dir} already holds a run ({', '.join(earlier)}); choose another output_dir, "
            "set overwrite_output_dir: true (--overwrite), or continue it with resume: auto (--resume)"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"cannot write to output_dir {run_dir}: {exc.strerror or exc}; choose a writable path") from None
    return run_dir


def clear_earlier_run(run_dir: Path) -> None:
    for marker in RUN_MARKERS + ("bad_batches.json", "README.md", "data.json", "report.html", "plots",
                                 "predictions_validation.jsonl", "tensorboard", "mlruns"):
        target = run_dir / marker
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


@contextlib.contextmanager
def run_lock(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Holds `run_dir/.lock` for the duration of a run; a second live run on the folder is refused.

    A lock left by a process that no longer exists (a crash or kill -9) is taken over. Under DDP
    only the main process holds it (`enabled` is False for the others).
    """
    if not enabled:
        yield
        return
    lock = run_dir / LOCK
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        owner = _lock_owner(lock)
        if owner is not None and owner != os.getpid() and process_alive(owner):
            raise RunDirError(f"another tunesmith run (pid {owner}) is using {run_dir}; wait for it or use another output_dir") from None
        lock.unlink(missing_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    remove_stale_temporaries(run_dir)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _lock_owner(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def check_resume_config(run_dir: Path, config: RunConfig, checkpoint_labels: list[str], label_names: list[str]) -> bool:
    """Prints what changed since the checkpoint; returns True when the interrupted epoch must restart.

    Raises:
        CheckpointError: the change makes the checkpoint unusable (other labels, task or model).
    """
    saved_path = run_dir / "config.yaml"
    old = flatten(yaml.safe_load(saved_path.read_text(encoding="utf-8"))) if saved_path.exists() else {}
    new = flatten(config.model_dump())
    ignore = {"resume", "overwrite_output_dir", "output_dir"}
    changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if k not in ignore and old.get(k) != new.get(k)}
    if checkpoint_labels and checkpoint_labels != label_names:
        raise CheckpointError(
            f"the checkpoint in {run_dir} is for {len(checkpoint_labels)} classes ({', '.join(checkpoint_labels)}), "
            f"the data now gives {len(label_names)} ({', '.join(label_names)}); start a new run in another output_dir")
    fixed = [k for k in changed if k in FIXED_ON_RESUME]
    if fixed:
        raise CheckpointError(
            f"cannot resume {run_dir}: {', '.join(f'{k} changed from {changed[k][0]!r} to {changed[k][1]!r}' for k in fixed)}; "
            "start a new run in another output_dir")
    if changed:
        log.warning("resuming with a changed config (the new values apply from the checkpoint on): %s",
                    "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    restart = [k for k in changed if k in BATCHING_KEYS]
    if any(k in changed for k in EFFECTIVE_BATCH) and _effective_batch(old) != _effective_batch(new):
        restart.append("the effective batch (per_device_train_batch_size x gradient_accumulation_steps)")
    if restart:
        log.warning("%s changed, so the position inside the interrupted epoch no longer applies: that epoch restarts "
                    "from its first batch", ", ".join(restart))
    return bool(restart)


def _effective_batch(flat: dict[str, Any]) -> int | None:
    micro, accumulation = (flat.get(k) for k in EFFECTIVE_BATCH)
    return micro * accumulation if isinstance(micro, int) and isinstance(accumulation, int) else None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict as dotted keys (`training.learning_rate`)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
