"""The metrics history: one JSON object per evaluation, appended to `metrics.jsonl` in the run dir."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class History:
    """Appends evaluation records to a JSONL file and keeps them in memory for the report."""

    def __init__(self, path: Path):
        self.path = path
        self.records: list[dict[str, Any]] = []

    def append(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **record}
        self.records.append(record)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
