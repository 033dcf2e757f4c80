"""Continual updates on bank marketing: 2008 -> 2009 -> 2010 with `tunesmith update`, every arm on both periods.

Run by hand (not a test), from the repository root, with ../shared/data/bank_marketing beside the checkout:

    .venv/bin/python benchmarks/bank_marketing_update.py                 # 3 seeds, ~10 min on two cores
    .venv/bin/python benchmarks/bank_marketing_update.py --seeds 1
    .venv/bin/python benchmarks/bank_marketing_update.py --family lightgbm   # boosted trees: + a leaf-refit arm

The bank's term-deposit calls come in three years whose economy and label rate drift (4.8% positive in
2008, 19.5% in 2009, 52.1% in 2010). Per seed: the parent, an MLP with tunesmith's defaults, trains on a
seeded 90% of 2008 (validating on the other 10%); `tunesmith update` then fine-tunes it on 2009 (a
seeded 10% of 2009 held out), and the updated model again on 2010. Each update runs every arm (stale,
update, replay, L2-SP, WiSE-FT, retrain on all rows so far, scratch on the new rows) and scores it on
the new period's validation rows and the previous period's. With `--family lightgbm` the parent is a
LightGBM booster (L2-SP and WiSE-FT need gradient-trained weights and are skipped; "update" is continued
boosting), and a `refit` arm re-estimates the parent's leaves on the new rows instead. `row_id`, `year` and `duration` are dropped
(`duration` is known only after the call: a leak). Prints a Markdown table (mean ± std over seeds) of
AUPRC per period and training seconds, and writes the numbers to benchmarks/out/bank_marketing_update.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "bank_marketing"
OUT = REPO / "benchmarks" / "out"


def one_seed(seed: int, folder: Path, family: str) -> dict[str, list[dict]]:
    """{"2009": rows, "2010": rows}, each row an arm with its new/old AUPRC and training seconds."""
    from tunesmith.comparison.update import update
    from tunesmith.data.period_files import split_rows
    from tunesmith.run import finetune

    train, val = split_rows(str(DATA / "period_1.csv"), 0.1, seed, folder / "2008")
    started = time.perf_counter()
    parent = finetune({"task": "tabular-classification", "output_dir": str(folder / "parent"), "overwrite_output_dir": True,
                       "model": {"source": family}, "data": {"train": train, "validation": val, "label_column": "y"},
                       "tabular_classification": {"drop": ["row_id", "year", "duration"]},
                       "training": {"seed": seed}}, quiet=True)
    tables, previous = {}, (parent.run_dir, val)
    print(f"seed {seed}: parent trained in {time.perf_counter() - started:.0f} s", flush=True)
    for year, file in (("2009", "period_2.csv"), ("2010", "period_3.csv")):
        result = update(previous[0], DATA / file, folder / year, old_validation=previous[1], overwrite=True, quiet=True)
        arms = list(result.arms)
        if family == "lightgbm":
            refit = update(previous[0], result.folder / "data" / "new_train.csv", folder / f"{year}-refit",
                           validation=json.loads((result.folder / "update.json").read_text())["lineage"]["new_validation"]["path"],
                           old_validation=previous[1], arms=(), overwrite=True, quiet=True,
                           overrides=["tabular_classification.boosting_update=refit"])
            arms.append(replace(refit.row("update"), arm="refit"))
        tables[year] = [{"arm": a.arm, "new": a.new["auprc"], "old": a.old["auprc"] if a.old else None,
                         "seconds": a.train_seconds, "note": a.note} for a in arms]
        previous = (result.folder / "update", json.loads((result.folder / "update.json").read_text())
                    ["lineage"]["new_validation"]["path"])
        print(f"seed {seed}: {year} done", flush=True)
    return tables


def spread(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return ""
    return f"{statistics.mean(got):.4f}" + (f" ± {statistics.stdev(got):.4f}" if len(got) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--family", choices=("mlp", "lightgbm"), default="mlp")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    runs = {seed: one_seed(seed, OUT / f"bank_marketing_update_{args.family}" / f"seed-{seed}", args.family)
            for seed in range(args.seeds)}
    (OUT / f"bank_marketing_update_{args.family}.json").write_text(json.dumps(runs, indent=2) + "\n")
    load = os.getloadavg()
    print(f"\n{args.seeds} seeds; load average at the end {load[0]:.2f} on {os.cpu_count()} cores\n")
    for year, old in (("2009", "2008"), ("2010", "2009")):
        print(f"| update to {year} | AUPRC {year} (new) | AUPRC {old} (old) | train s |\n|---|---|---|---|")
        for i, row in enumerate(runs[0][year]):
            arms = [runs[s][year][i] for s in runs]
            seconds = spread([a["seconds"] for a in arms])
            print(f"| {row['arm']} | {spread([a['new'] for a in arms])} | {spread([a['old'] for a in arms])} | {seconds} |")
        print()


if __name__ == "__main__":
    main()
