"""SmolLM2-135M-Instruct (demo:smollm2) taught to answer SST-2 with exactly "positive" or "negative", with LoRA.

Run by hand (not a test), from the repository root, with SST-2 in ../shared/data/sst2:

    .venv/bin/python benchmarks/smollm2_sst2_lora.py                          # 800 train / 200 dev rows
    .venv/bin/python benchmarks/smollm2_sst2_lora.py --train-rows 100 --eval-rows 40   # a quick smoke run

Out of the box the instruct model answers in sentences of its own, so its answers rarely match the
one word asked for. The run writes prompt/response JSONL from seeded samples of train.tsv and
dev.tsv (to benchmarks/out/), fine-tunes with LoRA (causal-lm task, packing, loss on the answers
only), and reads the greedy answers of the validation rows before and after from the run's
predictions: format compliance (the answer is exactly one of the two words, case and whitespace
ignored) and accuracy (the answer is the right word). Training runs in a subprocess so its peak
memory is its own. Prints a Markdown table; raw numbers go to benchmarks/out/smollm2_sst2_lora.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
DATA = REPO.parent / "shared" / "data" / "sst2"
PROMPT = ("Is the sentiment of this movie review positive or negative? Answer with one word, positive or "
          "negative.\n\nReview: {text}")
WORDS = {"0": "negative", "1": "positive"}


def write_jsonl(source: Path, rows: int, seed: int, target: Path) -> None:
    """A seeded sample of an SST-2 TSV as prompt/response JSONL."""
    with source.open(encoding="utf-8", newline="") as f:
        records = [r for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r["text"].strip()]
    random.Random(seed).shuffle(records)
    with target.open("w", encoding="utf-8") as f:
        for r in records[:rows]:
            f.write(json.dumps({"prompt": PROMPT.format(text=r["text"].strip()),
                                "response": WORDS[r["label"].strip()]}) + "\n")


def config_for(args: argparse.Namespace) -> dict:
    return {
        "task": "causal-lm",
        "output_dir": str(OUT / "runs" / "smollm2-sst2-lora"),
        "overwrite_output_dir": True,
        "model": {"source": "demo:smollm2"},
        "data": {"train": str(OUT / "smollm2_sst2_train.jsonl"), "validation": str(OUT / "smollm2_sst2_dev.jsonl"),
                 "max_length": 192},
        "training": {"num_train_epochs": args.epochs, "learning_rate": args.lr, "per_device_train_batch_size": 8,
                     "per_device_eval_batch_size": 16, "warmup_ratio": 0.1, "early_stopping_patience": None,
                     "metric_for_best_model": "exact_match", "seed": 0},
        "lora": {"enabled": True, "r": 8, "alpha": 16},
        "causal_lm": {"packing": True, "max_new_tokens": 4, "generate_on_eval": True},
    }


def run(args: argparse.Namespace) -> dict:
    """Trains and returns the numbers (in the child process)."""
    import tunesmith

    start = time.perf_counter()
    result = tunesmith.finetune(config_for(args), quiet=True)
    wall = time.perf_counter() - start
    evals = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "before": {k: result.baseline.get(k) for k in ("exact_match", "loss")},
        "after": {k: result.final.get(k) for k in ("exact_match", "loss")},
        "per_epoch_exact_match": [r.get("exact_match") for r in evals if r["phase"] == "eval"],
        "train_seconds": round(result.train_seconds, 1),
        "wall_seconds": round(wall, 1),
        "samples_per_second": round(result.samples_per_second, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # KiB on Linux
        "run_dir": str(result.run_dir),
    }


def answers_from(run_dir: Path, model: str, dev: Path) -> dict:
    """Format compliance and accuracy of `tunesmith predict` answers of `model` on the dev rows."""
    out = OUT / f"smollm2_sst2_{model.replace('/', '_').replace(':', '_')}_answers.jsonl"
    subprocess.run([str(Path(sys.executable).parent / "tunesmith"), "predict", model, "--data", str(dev),
                    "--output", str(out), "--set", "task=causal-lm", "--set", "causal_lm.max_new_tokens=4"],
                   check=True, capture_output=True, text=True)
    predicted = [json.loads(line)["response"].strip().casefold() for line in out.read_text().splitlines()]
    truth = [json.loads(line)["response"] for line in dev.read_text().splitlines()]
    return {"format_compliance": sum(p in WORDS.values() for p in predicted) / len(truth),
            "accuracy": sum(p == t for p, t in zip(predicted, truth)) / len(truth),
            "examples": predicted[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=800)
    parser.add_argument("--eval-rows", type=int, default=200)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args)))
        return
    if not (DATA / "train.tsv").is_file():
        sys.exit(f"SST-2 not found at {DATA} (../shared/data beside the repository)")
    OUT.mkdir(parents=True, exist_ok=True)
    dev = OUT / "smollm2_sst2_dev.jsonl"
    write_jsonl(DATA / "train.tsv", args.train_rows, 0, OUT / "smollm2_sst2_train.jsonl")
    write_jsonl(DATA / "dev.tsv", args.eval_rows, 0, dev)
    before = answers_from(OUT, "demo:smollm2", dev)
    proc = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the run failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    after = answers_from(OUT, r["run_dir"], dev)
    r.update(answers_before=before, answers_after=after, args=vars(args), load_average=os.getloadavg())
    (OUT / "smollm2_sst2_lora.json").write_text(json.dumps(r, indent=2) + "\n")
    print("| | format compliance | accuracy | exact_match (run) | loss per answer token |")
    print("|---|---|---|---|---|")
    print(f"| before | {before['format_compliance']:.3f} | {before['accuracy']:.3f} | {r['before']['exact_match']:.3f} "
          f"| {r['before']['loss']:.3f} |")
    print(f"| after LoRA | {after['format_compliance']:.3f} | {after['accuracy']:.3f} | {r['after']['exact_match']:.3f} "
          f"| {r['after']['loss']:.3f} |")
    print(f"train {args.train_rows} rows x {args.epochs:g} epochs: {r['train_seconds'] / 60:.1f} min, "
          f"{r['samples_per_second']:.1f} samples/s, peak RSS {r['peak_rss_mib']} MiB; answers before: "
          f"{before['examples']}, after: {after['examples']}")


if __name__ == "__main__":
    main()
