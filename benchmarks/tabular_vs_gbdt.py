"""Tabular: tunesmith's MLP and FT-Transformer against gradient-boosted trees at their best, on the same splits.

Run by hand (not a test), from the repository root, with ../shared/data beside the checkout:

    taskset -c 0 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/tabular_vs_gbdt.py   # ~15 min
    .venv/bin/python benchmarks/tabular_vs_gbdt.py --seeds 1 --datasets german_credit                      # ~2 min

Data (read from ../shared/data, never copied; only the train/validation split files are written, to
benchmarks/out/tabular_vs_gbdt/, so every arm sees exactly the same rows):

- bank_marketing, a time-shift test: train on period_1.csv (2008) less a stratified 10 % held out for
  validation / early stopping; test on period_2.csv (2009) and period_3.csv (2010). `row_id`, `year`
  and `duration` are dropped (duration is known only after the call and leaks the label). Label `y`.
- german_credit: train.csv less a stratified 20 % for validation; test on test.csv. Label `bad_credit`.

Arms, each training run in its own subprocess:

- mlp, mlp balanced, ft-transformer: `tunesmith.finetune` with the task's defaults (30 epochs, early
  stopping on validation AUPRC), `training.class_weights: balanced` for the second; `--seeds` seeds each
  (mean ± std); the saved best model scored on each test file with `tunesmith.run.evaluate`. On one core
  ft-transformer takes ~65 s an epoch of bank_marketing (up to ~35 min a seed at the default 30), so
  there it runs `--bank-ft-epochs` (8) epochs and `--bank-ft-seeds` (1) seeds; 0 epochs: the default.
- hist-gbdt: scikit-learn HistGradientBoostingClassifier, native categorical columns
  (`categorical_features="from_dtype"`), early stopping on the same validation rows (fit's `X_val`,
  scikit-learn 1.7 or later; log loss, 20 rounds of patience, up to 2,000 iterations); grid
  learning_rate {0.05, 0.1} x max_leaf_nodes {15, 31}, the point with the best validation AUPRC kept
  ("at its best").
- lightgbm: LGBMClassifier, pandas categorical columns, early stopping on the same validation rows
  (binary log loss, 50 rounds, up to 5,000 trees), the same grid (num_leaves for max_leaf_nodes), the
  same choice. Skipped with a note if lightgbm (not a tunesmith dependency) is not installed.

The trees see the same columns as the networks, with the same typing: a column is categorical when any
training cell is not a number (data/tables.py's rule), numeric otherwise. All scores (AUPRC = average
precision, ROC AUC) are of the positive label 1 with scikit-learn's functions, the ones tunesmith uses.
Train seconds are the wall clock of the fit (tunesmith: the whole `finetune` call, reading and
preprocessing included; trees: the chosen grid point's fit, and the whole grid apart). Each worker
records the share of its cores other processes took. Prints Markdown tables; raw numbers and worker
logs go to benchmarks/out/tabular_vs_gbdt.json and benchmarks/out/tabular_vs_gbdt/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
OUT = REPO / "benchmarks" / "out"
WORK = OUT / "tabular_vs_gbdt"

DATASETS = {
    "bank_marketing": {"train": DATA / "bank_marketing" / "period_1.csv", "validation_fraction": 0.1, "label": "y",
                       "drop": ["row_id", "year", "duration"],
                       "tests": {"2009": DATA / "bank_marketing" / "period_2.csv",
                                 "2010": DATA / "bank_marketing" / "period_3.csv"}},
    "german_credit": {"train": DATA / "german_credit" / "train.csv", "validation_fraction": 0.2, "label": "bad_credit",
                      "drop": [], "tests": {"test": DATA / "german_credit" / "test.csv"}},
}
NEURAL = {"mlp": {"source": "mlp"}, "mlp balanced": {"source": "mlp", "class_weights": "balanced"},
          "ft-transformer": {"source": "ft-transformer"}}
TREES = ("hist-gbdt", "lightgbm")
GRID = [(lr, leaves) for lr in (0.05, 0.1) for leaves in (15, 31)]
SPLIT_SEED = 0  # the train/validation split is the same for every arm and seed


# ---- the split ------------------------------------------------------------------------------

def split_files(name: str) -> dict[str, Path]:
    """train.csv and validation.csv of `name` in WORK/name: a stratified split of its training file, all
    columns kept as text (tunesmith drops its columns itself)."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    d = DATASETS[name]
    folder = WORK / name
    folder.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(d["train"], dtype=str, keep_default_na=False)
    train, val = train_test_split(table, test_size=d["validation_fraction"], stratify=table[d["label"]],
                                  random_state=SPLIT_SEED)
    paths = {"train": folder / "train.csv", "validation": folder / "validation.csv"}
    train.sort_index().to_csv(paths["train"], index=False)
    val.sort_index().to_csv(paths["validation"], index=False)
    return paths


# ---- workers --------------------------------------------------------------------------------

def neural_worker(args: argparse.Namespace) -> dict:
    from tunesmith.run import evaluate, finetune

    d, arm = DATASETS[args.dataset], NEURAL[args.arm]
    folder = WORK / args.dataset
    training = {"seed": args.seed, **({"class_weights": arm["class_weights"]} if "class_weights" in arm else {})}
    if args.epochs:
        training["num_train_epochs"] = args.epochs
    config = {
        "task": "tabular-classification",
        "output_dir": str(folder / "runs" / f"{args.arm.replace(' ', '-')}-seed{args.seed}"), "overwrite_output_dir": True,
        "model": {"source": arm["source"]},
        "data": {"train": str(folder / "train.csv"), "validation": str(folder / "validation.csv"), "label_column": d["label"]},
        "tabular_classification": {"drop": d["drop"]},
        "training": training,
    }
    start = time.perf_counter()
    result = finetune(config, quiet=True)
    wall = time.perf_counter() - start
    tests = {}
    for period, path in d["tests"].items():
        m = evaluate(str(result.run_dir), str(path))
        tests[period] = {"auprc": m["auprc"], "roc_auc": m["roc_auc"], "rows": m["rows"]}
    return {"train_s": round(wall, 1), "loop_s": round(result.train_seconds, 1), "best_step": result.best_step,
            "stopped_early": result.stopped_early, "validation_auprc": result.final.get("auprc"), "tests": tests}


def frames(name: str):
    """(X_train, y_train, X_val, y_val, {period: (X, y)}) as pandas frames: the dropped columns gone; a column
    categorical (with the training categories) when any training cell is not a number, float otherwise."""
    import pandas as pd

    d = DATASETS[name]
    read = lambda p: pd.read_csv(p, dtype=str, keep_default_na=False)
    train, val = read(WORK / name / "train.csv"), read(WORK / name / "validation.csv")
    tests = {period: read(path) for period, path in d["tests"].items()}
    features = [c for c in train.columns if c != d["label"] and c not in d["drop"]]
    kinds = {}
    for c in features:
        cells = train[c].str.strip()
        present = cells != ""
        kinds[c] = "numeric" if pd.to_numeric(cells[present], errors="coerce").notna().all() else "categorical"

    def typed(table):
        x = pd.DataFrame(index=table.index)
        for c in features:
            cells = table[c].str.strip()
            if kinds[c] == "numeric":
                x[c] = pd.to_numeric(cells.replace("", None), errors="coerce").astype(float)
            else:
                x[c] = pd.Categorical(cells, categories=sorted(set(train[c].str.strip()) - {""}))
        return x, (table[d["label"]].astype(int) == 1).astype(int).to_numpy()

    return (*typed(train), *typed(val), {p: typed(t) for p, t in tests.items()})


def tree_worker(args: argparse.Namespace) -> dict:
    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score

    x_train, y_train, x_val, y_val, tests = frames(args.dataset)
    grid, fits = [], {}
    grid_start = time.perf_counter()
    for lr, leaves in GRID:
        start = time.perf_counter()
        if args.arm == "hist-gbdt":
            from sklearn.ensemble import HistGradientBoostingClassifier

            model = HistGradientBoostingClassifier(
                learning_rate=lr, max_leaf_nodes=leaves, max_iter=2000, early_stopping=True, scoring="loss",
                n_iter_no_change=20, categorical_features="from_dtype", random_state=args.seed)
            model.fit(x_train, y_train, X_val=x_val, y_val=y_val)
            iterations = int(model.n_iter_)
        else:
            import lightgbm as lgb

            model = lgb.LGBMClassifier(learning_rate=lr, num_leaves=leaves, n_estimators=5000, random_state=args.seed,
                                       n_jobs=int(os.environ.get("OMP_NUM_THREADS", "0") or 0), verbose=-1)
            model.fit(x_train, y_train, eval_set=[(x_val, y_val)], eval_metric="binary_logloss",
                      callbacks=[lgb.early_stopping(50, verbose=False)])
            iterations = int(model.best_iteration_)
        seconds = time.perf_counter() - start
        p_val = model.predict_proba(x_val)[:, 1]
        point = {"learning_rate": lr, "leaves": leaves, "iterations": iterations, "fit_s": round(seconds, 2),
                 "validation_auprc": float(average_precision_score(y_val, p_val))}
        grid.append(point)
        fits[(lr, leaves)] = model
    grid_s = time.perf_counter() - grid_start
    best = max(grid, key=lambda g: g["validation_auprc"])
    model = fits[(best["learning_rate"], best["leaves"])]
    scores = {}
    for period, (x, y) in tests.items():
        p = model.predict_proba(x)[:, 1]
        scores[period] = {"auprc": float(average_precision_score(y, p)), "roc_auc": float(roc_auc_score(y, p)),
                          "rows": len(y)}
    assert np.isfinite([s["auprc"] for s in scores.values()]).all()
    return {"train_s": best["fit_s"], "grid_s": round(grid_s, 1), "chosen": best, "grid": grid,
            "validation_auprc": best["validation_auprc"], "tests": scores}


def worker(args: argparse.Namespace) -> None:
    from _arms import cpu_probe, load_between

    begin = cpu_probe()
    record = neural_worker(args) if args.arm in NEURAL else tree_worker(args)
    record.update(load_between(begin, cpu_probe()))
    print(json.dumps(record))


# ---- the driver -----------------------------------------------------------------------------

def run_worker(dataset: str, arm: str, seed: int, threads: int, epochs: int = 0) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    log = WORK / "logs" / f"{dataset}-{arm.replace(' ', '-')}-seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, __file__, "--worker", "--dataset", dataset, "--arm", arm, "--seed", str(seed),
                           "--epochs", str(epochs)],
                          check=False, capture_output=True, text=True, env=env)
    log.write_text(proc.stdout + "\n---- stderr ----\n" + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"the {arm} run on {dataset} (seed {seed}) failed, log {log}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def have_lightgbm() -> bool:
    proc = subprocess.run([sys.executable, "-c", "import lightgbm"], check=False, capture_output=True)
    return proc.returncode == 0


def mean_std(values: list[float], digits: int = 4) -> str:
    import numpy as np

    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def tables(record: dict) -> str:
    import numpy as np

    lines = ["| data | test rows (positives) | arm | AUPRC | ROC AUC | train s (wall) |", "|---|---|---|---|---|---|"]
    for dataset, arms in record["runs"].items():
        for period, stats in record["tests"][dataset].items():
            for arm, runs in arms.items():
                auprc = [r["tests"][period]["auprc"] for r in runs]
                auc = [r["tests"][period]["roc_auc"] for r in runs]
                secs = [r["train_s"] for r in runs]
                seconds = f"{np.mean(secs):.{1 if np.mean(secs) >= 10 else 2}f}" + (f" (grid {runs[0]['grid_s']:.1f})" if "grid_s" in runs[0] else "")
                seeds = f" ({len(runs)} seeds)" if len(runs) > 1 else ""
                lines.append(f"| {dataset} | {period}: {stats['rows']} ({stats['positive_rate']:.1%}) | {arm}{seeds} | "
                             f"{mean_std(auprc)} | {mean_std(auc)} | {seconds} |")
    lines += ["", "| data | arm | validation AUPRC | chosen / stopping | others' share of the cores |", "|---|---|---|---|---|"]
    for dataset, arms in record["runs"].items():
        for arm, runs in arms.items():
            val = mean_std([r["validation_auprc"] for r in runs])
            if "chosen" in runs[0]:
                c = runs[0]["chosen"]
                how = f"lr {c['learning_rate']}, {c['leaves']} leaves, {c['iterations']} iterations"
            else:
                how = "best steps " + ", ".join(str(r["best_step"]) for r in runs) + \
                      (", stopped early" if all(r["stopped_early"] for r in runs) else "")
            share = ", ".join(f"{r['other_processes_share_of_its_cores']:.0%}" for r in runs)
            lines.append(f"| {dataset} | {arm} | {val} | {how} | {share} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: " + ", ".join(DATASETS))
    parser.add_argument("--arms", default=",".join([*NEURAL, *TREES]), help="comma-separated arms")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of each neural arm (42, 43, ...); trees: one")
    parser.add_argument("--bank-ft-epochs", type=int, default=8,
                        help="ft-transformer on bank_marketing: epochs (0: the default 30, up to ~35 min a seed on one core)")
    parser.add_argument("--bank-ft-seeds", type=int, default=1, help="ft-transformer on bank_marketing: seeds")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of each worker")
    parser.add_argument("--table-only", action="store_true", help="reprint the tables of the last run")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    out_file = OUT / "tabular_vs_gbdt.json"
    if args.table_only:
        return print(tables(json.loads(out_file.read_text())))
    import pandas as pd

    arms = args.arms.split(",")
    notes = []
    if "lightgbm" in arms and not have_lightgbm():
        arms.remove("lightgbm")
        notes.append("lightgbm is not installed in this Python: arm skipped (pip install lightgbm)")
        print(notes[-1], file=sys.stderr)
    record = {"seeds": args.seeds, "threads": args.threads, "affinity": sorted(os.sched_getaffinity(0)),
              "command": " ".join(sys.argv), "notes": notes, "tests": {}, "runs": {}}
    start = time.perf_counter()
    for dataset in args.datasets.split(","):
        split_files(dataset)
        d = DATASETS[dataset]
        record["tests"][dataset] = {}
        for period, path in d["tests"].items():
            y = pd.read_csv(path, usecols=[d["label"]])[d["label"]]
            record["tests"][dataset][period] = {"rows": len(y), "positive_rate": float((y == 1).mean())}
        record["runs"][dataset] = {}
        for arm in arms:
            capped = arm == "ft-transformer" and dataset == "bank_marketing"
            n = (args.bank_ft_seeds if capped else args.seeds) if arm in NEURAL else 1
            epochs = args.bank_ft_epochs if capped else 0
            name = f"{arm} ({epochs} epochs)" if epochs else arm
            record["runs"][dataset][name] = []
            for seed in range(42, 42 + n):
                r = run_worker(dataset, arm, seed, args.threads, epochs)
                record["runs"][dataset][name].append(r)
                print(f"{dataset} {arm} seed {seed}: " + json.dumps({k: v for k, v in r.items() if k != "grid"}),
                      file=sys.stderr)
                out_file.write_text(json.dumps(record, indent=2) + "\n")  # after each run: a later failure keeps it
    record["total_s"] = round(time.perf_counter() - start, 1)
    out_file.write_text(json.dumps(record, indent=2) + "\n")
    print(tables(record))
    print(f"\ntotal {record['total_s']:.0f} s" + "".join(f"\nnote: {n}" for n in notes))


if __name__ == "__main__":
    main()
