"""The metrics history: one JSON object per evaluation, appended to `metrics.jsonl` in the run dir."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


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

    def find(self, phase: str) -> dict[str, Any] | None:
        return next((r for r in self.records if r["phase"] == phase), None)

    def find_step(self, phase: str, step: int | None) -> dict[str, Any] | None:
        return next((r for r in self.records if r["phase"] == phase and r["step"] == step), None)

    def append(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **record}
        self.records.append(record)
        if not self.write:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.on_append is not None:
            self.on_append(record)
