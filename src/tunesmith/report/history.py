"""The metrics history: one JSON object per evaluation, appended to `metrics.jsonl` in the run dir.

A record is written whole or not at all (a failed append is cut back), so a resume always reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.engine.write_errors import write_failure
from tunesmith.errors import RunDirError


class History:
    """Appends evaluation records to a JSONL file and keeps them in memory for the report."""

    def __init__(self, path: Path, keep_until_step: int | None = None, write: bool = True,
                 on_append: Callable[[dict[str, Any]], None] | None = None):
        """Starts a new file, or with `keep_until_step` (resuming) keeps the records up to that
        step and drops later ones, which a crashed run wrote after its last checkpoint. With
        `write` off (DDP processes other than the main one) records are kept in memory only.
        `on_append` sees every record written (experiment trackers, `tunesmith.report.tracking`)."""
        self.path = path
        self.write = write
        self.on_append = on_append
        self.records: list[dict[str, Any]] = []
        if keep_until_step is not None and path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            old = [json.loads(line) for line in lines if line.strip()]
            self.records = [r for r in old if r["step"] < keep_until_step or r["phase"] == "baseline"
                            or (r["step"] == keep_until_step and r["phase"] in ("train", "eval"))]
        if write:
            path.write_text("".join(json.dumps(r) + "\n" for r in self.records), encoding="utf-8")

    def _write_line(self, line: str, record: dict[str, Any]) -> None:
        """Appends one line, or none: on a failed write the file is cut back to where it was, so a
        resume never reads half a record.

        Raises:
            RunDirError: the disk is full or the file cannot be written.
        """
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.truncate(self.path, size)
            reason = write_failure(exc, self.path.parent)
            raise RunDirError(
                f"{reason} while appending the {record.get('phase')} record of step {record.get('step')} to {self.path}; "
                "the file was cut back to its last whole record and the checkpoints are untouched: free space, then "
                "continue with --resume") from None

    def find(self, phase: str) -> dict[str, Any] | None:
        return next((r for r in self.records if r["phase"] == phase), None)

    def find_step(self, phase: str, step: int | None) -> dict[str, Any] | None:
        return next((r for r in self.records if r["phase"] == phase and r["step"] == step), None)

    def append(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **record}
        self.records.append(record)
        if not self.write:
            return
        self._write_line(json.dumps(record) + "\n", record)
        if self.on_append is not None:
            self.on_append(record)
