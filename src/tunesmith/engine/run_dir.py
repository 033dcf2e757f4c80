"""The run directory: checked before training, and the place every output of a run lands."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from tunesmith.engine.checkpoint import remove_stale_temporaries
from tunesmith.errors import RunDirError

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "best", "checkpoints")


def prepare_run_dir(path: str | Path, overwrite: bool) -> Path:
    """Creates the run directory and proves it is writable, before any heavy work.

    Raises:
        RunDirError: it holds an earlier run (and `overwrite` is off), or it cannot be written.
    """
    run_dir = Path(path)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"output_dir {run_dir} is a file; choose a directory path")
    earlier = [m for m in RUN_MARKERS if (run_dir / m).exists()]
    if earlier and not overwrite:
        raise RunDirError(
            f"output_dir {run_dir} already holds a run ({', '.join(earlier)}); choose another output_dir "
            "or set overwrite_output_dir: true (--overwrite)"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for marker in earlier:
            target = run_dir / marker
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        probe = run_dir / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"cannot write to output_dir {run_dir}: {exc.strerror or exc}; choose a writable path") from None
    remove_stale_temporaries(run_dir)
    return run_dir
