"""What the tabular task tests share: writing rows as CSVs, and importing a best/ folder's own code."""

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


def split_csv(folder: Path, name: str, rows: list[dict], train_rows: int) -> tuple[str, str]:
    """`rows` shuffled (seed 0): the first `train_rows` to `<name>_train.csv`, the rest to `<name>_test.csv`."""
    import numpy as np

    order = np.random.default_rng(0).permutation(len(rows))
    return (write_csv(folder / f"{name}_train.csv", [rows[i] for i in order[:train_rows]]),
            write_csv(folder / f"{name}_test.csv", [rows[i] for i in order[train_rows:]]))


def standalone(folder: Path):
    """best/'s own tabular_model.py, imported from the file as a user without tunesmith would."""
    spec = importlib.util.spec_from_file_location("tabular_model_copy", folder / "tabular_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
