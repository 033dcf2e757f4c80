"""SST-2 with few labels: self-training on unlabelled sentences (`strategy.pseudo_label`, issue 23).

Run by hand (not a test), from the repository root, with ../shared/data beside it:

    .venv/bin/python benchmarks/self_training.py                      # 200 labelled, 4,000 unlabelled, ~15 minutes
    .venv/bin/python benchmarks/self_training.py --labelled 100 --threshold 0.95

demo:minilm fine-tuned on the first `--labelled` SST-2 training sentences, validated on 300 others
(best checkpoint and the temperature), against the same config self-trained on 4,000 further training
sentences with their labels removed; both best models scored on the 872 dev sentences, which neither
saw. The pseudo-labels' agreement with the labels SST-2 has for those sentences is printed beside
(tunesmith never reads them). ECE and log loss are of the calibrated probabilities `predict` writes (the
temperature T each run fitted on its validation rows). Prints a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "sst2"
OUT = REPO / "benchmarks" / "out" / "self_training"


def splits(labelled: int, pool: int) -> tuple[Path, Path, Path, dict[int, str]]:
    """(labelled TSV, validation TSV, unlabelled TSV, {line of the unlabelled file: its true label})."""
    header, *rows = (DATA / "train.tsv").read_text(encoding="utf-8").splitlines()
    OUT.mkdir(parents=True, exist_ok=True)
    train, val, unlabelled = OUT / "labelled.tsv", OUT / "validation.tsv", OUT / "unlabelled.tsv"
    train.write_text("\n".join([header, *rows[:labelled]]) + "\n", encoding="utf-8")
    val.write_text("\n".join([header, *rows[labelled:labelled + 300]]) + "\n", encoding="utf-8")
    pool_rows = rows[labelled + 300:labelled + 300 + pool]
    unlabelled.write_text("\n".join(["text", *(r.split("\t")[0] for r in pool_rows)]) + "\n", encoding="utf-8")
    truth = {i + 2: r.split("\t")[1] for i, r in enumerate(pool_rows)}  # line 1 is the header
    return train, val, unlabelled, truth


def main() -> None:
    import tunesmith

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelled", type=int, default=200)
    parser.add_argument("--pool", type=int, default=4000)
    parser.add_argument("--threshold", type=float, default=0.9)
    args = parser.parse_args()
    train, val, unlabelled, truth = splits(args.labelled, args.pool)
    config = {"task": "text-classification", "model": {"source": "demo:minilm"},
              "output_dir": str(OUT / f"run-{args.labelled}-{args.threshold}"), "overwrite_output_dir": True,
              "data": {"train": str(train), "validation": str(val), "max_length": 64},
              "training": {"num_train_epochs": 4, "learning_rate": 1e-4, "per_device_train_batch_size": 16,
                           "early_stopping_patience": None, "seed": 0},
              "strategy": {"pseudo_label": {"data": str(unlabelled), "threshold": args.threshold}}}
    started = time.perf_counter()
    result = tunesmith.finetune(config, quiet=True)
    seconds = time.perf_counter() - started
    summary = result.self_training
    assert summary is not None
    dev = str(DATA / "dev.tsv")
    scores = {arm: tunesmith.evaluate(str(Path(summary[arm]["run_dir"]) / "best"), dev)
              for arm in ("labelled_only", "self_trained")}
    written = [json.loads(line) for line in (result.run_dir / "self_train" / "pseudo_labels.jsonl").read_text().splitlines()]
    agree = sum(truth[r["line"]] == r["label"] for r in written) / max(len(written), 1)
    record = {"labelled": args.labelled, "pool": args.pool, "threshold": args.threshold,
              "pseudo_labelled": len(written), "pseudo_label_accuracy": agree, "seconds": round(seconds, 1),
              **{f"{arm}_{k}": scores[arm][k] for arm in scores for k in ("accuracy", "macro_f1", "ece_calibrated", "log_loss_calibrated",
                                                                  "temperature")}}
    print(json.dumps(record))
    print("| labelled rows | arm | dev accuracy | dev macro F1 | dev ECE | dev log loss | T |")
    print("|---|---|---|---|---|---|---|")
    for arm, title in (("labelled_only", "labelled only"),
                       ("self_trained", f"+ {len(written)} pseudo-labelled (≥ {args.threshold:g}; "
                                        f"{agree:.1%} agree with SST-2's labels)")):
        s = scores[arm]
        print(f"| {args.labelled} | {title} | {s['accuracy']:.3f} | {s['macro_f1']:.3f} | {s['ece_calibrated']:.3f} | "
              f"{s['log_loss_calibrated']:.3f} | {s['temperature']:.2f} |")
    print(f"wall time, all three stages: {seconds:.0f} s")


if __name__ == "__main__":
    main()
