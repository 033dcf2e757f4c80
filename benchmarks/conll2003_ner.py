"""CoNLL-2003 named entities with demo:minilm: entity-level F1 on dev and test (goal: test F1 >= 0.85).

Run by hand (not a test), from the repository root, with ../shared/data beside it:

    .venv/bin/python benchmarks/conll2003_ner.py                    # full train set, 3 epochs
    .venv/bin/python benchmarks/conll2003_ner.py --epochs 1 --train-rows 2000   # a quick smoke run

Fine-tunes on train.txt, picks the best epoch by dev entity F1, then scores that model on test.txt
with `tunesmith evaluate`. Training runs in a subprocess so its peak memory is its own. Prints a
Markdown row for benchmarks/RESULTS.md and writes raw numbers to benchmarks/out/conll2003_ner-PRECISION.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "conll2003"


def config_for(args: argparse.Namespace) -> dict:
    return {
        "task": "token-classification",
        "output_dir": args.output_dir,
        "overwrite_output_dir": True,
        "model": {"source": "demo:minilm"},
        "data": {"train": str(DATA / "train.txt"), "validation": str(DATA / "dev.txt"),
                 "max_length": args.max_length, "max_train_samples": args.train_rows},
        "training": {"num_train_epochs": args.epochs, "learning_rate": args.lr,
                     "per_device_train_batch_size": args.batch_size, "per_device_eval_batch_size": 128,
                     "warmup_ratio": 0.1, "early_stopping_patience": None, "seed": 0, "logging_steps": 50,
                     "mixed_precision": args.precision},
        "strategy": {"layer_lr_decay": args.layer_lr_decay},
    }


def run(args: argparse.Namespace) -> dict:
    """Trains, evaluates on test, and returns the numbers (in the child process)."""
    import tunesmith
    from tunesmith.run import evaluate

    config = config_for(args)
    start = time.perf_counter()
    result = tunesmith.finetune(config, quiet=True)
    train_wall = time.perf_counter() - start
    test = evaluate(str(result.best_model_dir), str(DATA / "test.txt"))
    return {
        "train_rows": json.loads((result.run_dir / "data.json").read_text())["train"]["rows"],
        "epochs": args.epochs,
        "dev_f1_before": result.baseline["f1"],
        "dev_f1": result.final["f1"],
        "test_f1": test["f1"], "test_precision": test["precision"], "test_recall": test["recall"],
        "test_per_type_f1": {k: round(v["f1"], 4) for k, v in test["per_class"].items()},
        "best_step": result.best_step,
        "train_seconds": round(result.train_seconds, 1),
        "wall_seconds": round(train_wall, 1),
        "samples_per_second": round(result.samples_per_second, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # KiB on Linux
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "config": config,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--train-rows", type=int, default=None, help="seeded sample of training sentences")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--layer-lr-decay", type=float, default=0.9)
    parser.add_argument("--precision", choices=("auto", "no", "bf16"), default="auto",
                        help="training.mixed_precision (auto: bf16 on a CPU with AMX or AVX512-BF16)")
    parser.add_argument("--output-dir", default=str(REPO / "benchmarks" / "out" / "runs" / "conll2003"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args)))
        return
    if not DATA.is_dir():
        sys.exit(f"conll2003 not found at {DATA} (../shared/data beside the repository)")
    proc = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the run failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    out = REPO / "benchmarks" / "out" / f"conll2003_ner-{args.precision}.json"
    out.parent.mkdir(exist_ok=True)
    machine = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
               "cores": os.cpu_count()}
    out.write_text(json.dumps({"machine": machine, "result": r}, indent=2) + "\n")
    print("| train sentences | epochs | test F1 (P / R) | dev F1 (before) | train time | samples/s | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {r['train_rows']} | {r['epochs']:g} | {r['test_f1']:.4f} ({r['test_precision']:.4f} / "
          f"{r['test_recall']:.4f}) | {r['dev_f1']:.4f} ({r['dev_f1_before']:.4f}) | {r['train_seconds'] / 60:.1f} min "
          f"| {r['samples_per_second']:.1f} | {r['peak_rss_mib']} MiB |")
    print("test F1 per type:", r["test_per_type_f1"])


if __name__ == "__main__":
    main()
