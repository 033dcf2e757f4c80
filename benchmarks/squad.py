"""SQuAD with demo:minilm: extractive question answering, and question generation as seq2seq.

Run by hand (not a test), from the repository root, with ../shared/data beside it:

    .venv/bin/python benchmarks/squad.py --task qa              # EM / F1 on the 993 dev questions
    .venv/bin/python benchmarks/squad.py --task qg              # BLEU / ROUGE of generated questions
    .venv/bin/python benchmarks/squad.py --task qg --prepare    # only write the question-generation pairs

`squad_dev_small` holds 1,870 training and 993 dev questions from disjoint articles. `qa` fine-tunes
MiniLM's encoder with a start/end head and reports SQuAD exact match and F1 before and after.
`qg` turns every question into a seq2seq pair, source `answer [SEP] the context sentence holding it`,
target the question (the question-generation setup of Du et al., 2017), and fine-tunes MiniLM
warm-started as an encoder-decoder; it reports BLEU and ROUGE of the greedy questions. Training
runs in a subprocess so its peak memory is its own. Prints a Markdown row for RESULTS.md and
writes raw numbers to benchmarks/out/squad-<task>.json.
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
DATA = REPO.parent / "shared" / "data" / "squad_dev_small"
PAIRS = REPO / "benchmarks" / "out" / "squad-qg"  # where --task qg writes its pairs (examples/ reads them too)


def answer_sentence(context: str, start: int) -> str:
    """The sentence of `context` holding character `start`: from the '. ' before it to the one after."""
    left = context.rfind(". ", 0, start)
    right = context.find(". ", start)
    return context[left + 2 if left >= 0 else 0: right + 1 if right >= 0 else len(context)]


def prepare_pairs() -> Path:
    """Writes qg-train.jsonl and qg-dev.jsonl ({"source", "target"}) from the SQuAD files."""
    PAIRS.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        with (PAIRS / f"{split}.jsonl").open("w", encoding="utf-8") as out:
            for line in (DATA / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                answer, start = row["answers"]["text"][0], row["answers"]["answer_start"][0]
                source = f"{answer} [SEP] {answer_sentence(row['context'], start)}"
                out.write(json.dumps({"source": source, "target": row["question"]}, ensure_ascii=False) + "\n")
    return PAIRS


def config_for(args: argparse.Namespace) -> dict:
    output_dir = str(REPO / "benchmarks" / "out" / "runs" / f"squad-{args.task}")
    training = {"num_train_epochs": args.epochs, "learning_rate": args.lr, "per_device_train_batch_size": 16,
                "per_device_eval_batch_size": 64, "warmup_ratio": 0.1, "early_stopping_patience": None, "seed": 0,
                "logging_steps": 20}
    if args.task == "qa":
        return {"task": "question-answering", "output_dir": output_dir, "overwrite_output_dir": True,
                "model": {"source": "demo:minilm"},
                "data": {"train": str(DATA / "train.jsonl"), "validation": str(DATA / "dev.jsonl"),
                         "max_length": args.max_length},
                "training": training, "strategy": {"layer_lr_decay": 0.9}}
    return {"task": "seq2seq", "output_dir": output_dir, "overwrite_output_dir": True, "model": {"source": "demo:minilm"},
            "data": {"train": str(PAIRS / "train.jsonl"), "validation": str(PAIRS / "dev.jsonl"),
                     "max_length": args.max_length},
            "seq2seq": {"max_target_length": 48, "max_new_tokens": 32},
            "training": {**training, "metric_for_best_model": "rougeL"}, "strategy": {"layer_lr_decay": 0.9}}


def run(args: argparse.Namespace) -> dict:
    """Trains and returns the numbers (in the child process)."""
    import tunesmith

    config = config_for(args)
    start = time.perf_counter()
    result = tunesmith.finetune(config, quiet=True)
    keys = ("exact_match", "f1") if args.task == "qa" else ("bleu", "rouge1", "rouge2", "rougeL", "loss")
    return {
        "task": args.task, "epochs": args.epochs, "lr": args.lr,
        "train_rows": json.loads((result.run_dir / "data.json").read_text())["train"]["rows"],
        "before": {k: result.baseline[k] for k in keys}, "after": {k: result.final[k] for k in keys},
        "best_step": result.best_step,
        "train_seconds": round(result.train_seconds, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "samples_per_second": round(result.samples_per_second, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # KiB on Linux
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "config": config,
    }


def table(r: dict) -> str:
    keys = list(r["after"])
    head = "| train rows | epochs | " + " | ".join(f"{k} before → after" for k in keys) + " | train time | peak RSS |"
    cells = " | ".join(f"{r['before'][k]:.4f} → **{r['after'][k]:.4f}**" for k in keys)
    return "\n".join([head, "|" + "---|" * (len(keys) + 4),
                      f"| {r['train_rows']} | {r['epochs']:g} | {cells} | {r['train_seconds'] / 60:.1f} min "
                      f"| {r['peak_rss_mib']} MiB |"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["qa", "qg"], required=True)
    parser.add_argument("--epochs", type=float, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=None, help="default: 384 (qa), 128 (qg)")
    parser.add_argument("--prepare", action="store_true", help="qg: only write the pairs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.max_length = args.max_length or (384 if args.task == "qa" else 128)
    if args.child:
        print(json.dumps(run(args)))
        return
    if not DATA.is_dir():
        sys.exit(f"squad_dev_small not found at {DATA} (../shared/data beside the repository)")
    if args.task == "qg":
        print(f"question-generation pairs in {prepare_pairs()}")
        if args.prepare:
            return
    proc = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the run failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    machine = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
               "cores": os.cpu_count()}
    out = REPO / "benchmarks" / "out" / f"squad-{args.task}.json"
    out.write_text(json.dumps({"machine": machine, "result": r}, indent=2) + "\n")
    print(table(r))


if __name__ == "__main__":
    main()
