"""What the tabular task tests share: writing rows as a CSV, and importing a best/ folder's own code."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path


def write_csv(path: Path, rows: list[dict]) -> str:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def standalone(folder: Path):
    """best/'s own tabular_model.py, imported from the file as a user without tunesmith would."""
    spec = importlib.util.spec_from_file_location("tabular_model_copy", folder / "tabular_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
