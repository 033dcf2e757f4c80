"""Calibrated probabilities on held-out data: temperature scaling fitted on validation (issue 23).

Run by hand (not a test), from the repository root, with ../shared/data beside it:

    .venv/bin/python benchmarks/calibration.py                 # all three, ~15 minutes on 2 CPU cores
    .venv/bin/python benchmarks/calibration.py --cases sst2

Each case fine-tunes with a validation split carved from its training data (the temperature and the
screening thresholds are fitted there, at the best epoch), then scores `best/` with
`tunesmith.evaluate` on a test split it never saw: the raw and the temperature-scaled expected
calibration error and log loss, ROC AUC, and the sensitivity and specificity that the thresholds
chosen on validation for a target sensitivity of 0.90 / 0.95 give on the test rows.

- sst2: demo:minilm on the first 2,000 SST-2 training sentences (20% validation), 3 epochs; test: the
  872 dev sentences. Positive label "1".
- hymenoptera: demo:efficientnet-lite0 on the 245 training photos (20% validation), 12 epochs;
  test: the 153 val photos. Positive label "bees".
- breast-cancer: scikit-learn's Wisconsin diagnostic table (569 rows, shipped inside scikit-learn,
  written to benchmarks/out as CSV: nothing is committed), an MLP through the tabular task, split
  60/20/20 stratified with seed 0; positive label "malignant". The tabular task keeps its own
  decision threshold and no temperature; the operating points are the same mechanism.

Prints a Markdown table for benchmarks/RESULTS.md and writes the numbers to
benchmarks/out/calibration.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
OUT = REPO / "benchmarks" / "out"


def sst2_train_slice(rows: int) -> Path:
    """The first `rows` SST-2 training sentences as a TSV under benchmarks/out."""
    path = OUT / f"sst2-train-{rows}.tsv"
    lines = (DATA / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(lines[: rows + 1]) + "\n", encoding="utf-8")
    return path


def breast_cancer_splits() -> tuple[Path, Path, Path]:
    """scikit-learn's breast-cancer table as train / validation / test CSVs (60/20/20, stratified, seed 0)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    table = load_breast_cancer(as_frame=True).frame
    table["diagnosis"] = table.pop("target").map({0: "malignant", 1: "benign"})
    rest, test = train_test_split(table, test_size=0.2, stratify=table["diagnosis"], random_state=0)
    train, val = train_test_split(rest, test_size=0.25, stratify=rest["diagnosis"], random_state=0)
    paths = tuple(OUT / f"breast-cancer-{name}.csv" for name in ("train", "validation", "test"))
    for frame, path in zip((train, val, test), paths):
        frame.to_csv(path, index=False)
    return paths  # type: ignore[return-value]


def cases() -> dict[str, tuple[dict, str]]:
    """case: (run config, test file)."""
    common = {"training": {"early_stopping_patience": None, "seed": 0, "per_device_train_batch_size": 32}}
    sst2 = {**common, "task": "text-classification", "model": {"source": "demo:minilm"},
            "data": {"train": str(sst2_train_slice(2000)), "validation_split": 0.2, "max_length": 128},
            "training": {**common["training"], "num_train_epochs": 3, "learning_rate": 5e-5}}
    images = {**common, "task": "image-classification", "model": {"source": "demo:efficientnet-lite0"},
              "data": {"train": str(DATA / "hymenoptera" / "train"), "validation_split": 0.2},
              "strategy": {"layer_lr_decay": 0.8}, "augmentation": {"preset": "light"},
              "training": {**common["training"], "num_train_epochs": 12, "learning_rate": 1e-3,
                           "per_device_train_batch_size": 16, "lr_scheduler_type": "cosine", "weight_decay": 0.05}}
    train, val, test = breast_cancer_splits()
    table = {**common, "task": "tabular-classification", "model": {"source": "mlp"},
             "data": {"train": str(train), "validation": str(val), "label_column": "diagnosis"},
             "tabular_classification": {"positive_label": "malignant"},
             "training": {**common["training"], "num_train_epochs": 15, "learning_rate": 1e-3}}
    return {"sst2": (sst2, str(DATA / "sst2" / "dev.tsv")),
            "hymenoptera": (images, str(DATA / "hymenoptera" / "val")),
            "breast-cancer": (table, str(test))}


def run_case(name: str, config: dict, test: str) -> dict:
    import tunesmith

    config = {**config, "output_dir": str(OUT / "calibration" / name), "overwrite_output_dir": True}
    start = time.perf_counter()
    result = tunesmith.finetune(config, quiet=True)
    scores = tunesmith.evaluate(str(result.run_dir / "best"), test)
    keep = ("accuracy", "roc_auc", "ece", "ece_calibrated", "log_loss", "log_loss_calibrated", "temperature",
            "operating_points")
    return {"case": name, "validation": {k: result.final.get(k) for k in keep},
            "test": {k: scores.get(k) for k in keep}, "seconds": round(time.perf_counter() - start, 1)}


def cell(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def table(results: list[dict]) -> str:
    lines = ["| case | test accuracy | ROC AUC | ECE raw → scaled | log loss raw → scaled | T | "
             "sens / spec at 0.90 | sens / spec at 0.95 |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        t = r["test"]
        points = t.get("operating_points") or {}
        ops = [f"{p['sensitivity']:.3f} / {p['specificity']:.3f}" if p else "–"
               for p in (points.get("0.90"), points.get("0.95"))]
        ece = f"{cell(t['ece'])} → {cell(t['ece_calibrated'])}" if t.get("ece_calibrated") is not None else cell(t["ece"])
        loss = (f"{cell(t['log_loss'])} → {cell(t['log_loss_calibrated'])}"
                if t.get("log_loss_calibrated") is not None else cell(t["log_loss"]))
        lines.append(f"| {r['case']} | {cell(t['accuracy'])} | {cell(t['roc_auc'])} | {ece} | {loss} | "
                     f"{cell(t['temperature'])} | {ops[0]} | {ops[1]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["sst2", "hymenoptera", "breast-cancer"])
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    every = cases()
    results = [run_case(name, *every[name]) for name in args.cases]
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}
    (OUT / "calibration.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    print(table(results))
    for r in results:
        print(r["case"], "validation:", json.dumps(r["validation"]))


if __name__ == "__main__":
    main()
