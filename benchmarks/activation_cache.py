"""SST-2 with demo:minilm, bottom half frozen: tunesmith with and without the activation cache, and Trainer.

Run by hand (not a test), from the repository root, with SST-2 in ../shared/data/sst2:

    .venv/bin/python benchmarks/activation_cache.py                       # 8000 rows, 3 epochs
    .venv/bin/python benchmarks/activation_cache.py --train-rows 2000 --epochs 2   # smoke check

The embeddings and blocks 0-2 of MiniLM-L6 (4 of its 8 layer groups, "the bottom half") are frozen;
blocks 3-5 and the head train. Three runs, each in its own subprocess, alternating `--repeats` times:
tunesmith with `activation_cache: auto` (epoch 1 records the frozen prefix's outputs, later epochs
replay them), tunesmith with `activation_cache: off`, and Hugging Face Trainer with the same
parameters frozen (`requires_grad=False`). Same rows, batch size, steps, learning rate, schedule and
seed. The script reports the time of each epoch (from per-step timestamps), the speed-up of epochs
after the first, the final dev accuracy and peak resident memory. The cached and uncached tunesmith
runs must reach the same accuracy (the cache changes the arithmetic by float rounding only).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sst2_vs_trainer import (BATCH_SIZE, EVAL_BATCH_SIZE, MAX_LENGTH, OUT, REPO, WARMUP_RATIO, WEIGHT_DECAY, _Rows,
                             loop_facts, machine, peak_rss_mib, probe, read_tsv, training_file)

FROZEN_GROUPS = 4  # embeddings + blocks 0-2 of MiniLM-L6's 8 groups (embeddings, 6 blocks, head)
ARMS = ("cache", "no-cache", "trainer")


def epoch_seconds(stamps: list[tuple[int, float]], steps_per_epoch: int, start: float) -> list[float]:
    """Seconds per epoch from (optimizer step, time) stamps taken after every step."""
    at = dict(stamps)
    ends = [at[k * steps_per_epoch] for k in range(1, len(stamps) // steps_per_epoch + 1) if k * steps_per_epoch in at]
    last = max(at)
    if last % steps_per_epoch:
        ends.append(at[last])
    return [b - a for a, b in zip([start, *ends], ends)]


def run_tunesmith(args: argparse.Namespace) -> dict:
    import tunesmith
    from tunesmith.engine.progress import ProgressDisplay

    stamps: list[tuple[int, float]] = []
    begin: dict = {}
    original_update, original_start, original_stop = ProgressDisplay.update, ProgressDisplay.start, ProgressDisplay.stop

    def on_start(self, total):
        begin.setdefault("probe", probe())
        return original_start(self, total)

    def on_update(self, step, epoch, loss=None, lr=None):
        if step:
            stamps.append((step, time.perf_counter()))
        return original_update(self, step, epoch, loss, lr)

    def on_stop(self):
        begin.setdefault("end", probe())
        return original_stop(self)

    ProgressDisplay.start, ProgressDisplay.update, ProgressDisplay.stop = on_start, on_update, on_stop
    total = args.steps_per_epoch * args.epochs
    config = {
        "output_dir": str(OUT / "runs" / f"cache-{args.worker}-{args.run_id}"), "overwrite_output_dir": True,
        "model": {"source": "demo:minilm"},
        "data": {"train": args.train_file, "validation": args.dev_file, "max_length": MAX_LENGTH},
        "training": {"max_steps": total, "learning_rate": args.learning_rate, "warmup_steps": args.warmup_steps,
                     "weight_decay": WEIGHT_DECAY, "seed": args.seed, "per_device_train_batch_size": BATCH_SIZE,
                     "per_device_eval_batch_size": EVAL_BATCH_SIZE, "eval_strategy": "steps", "eval_steps": total,
                     "early_stopping_patience": None, "logging_steps": 1,
                     "activation_cache": "auto" if args.worker == "cache" else "off"},
        "strategy": {"freeze": FROZEN_GROUPS},
    }
    result = tunesmith.finetune(config, quiet=True)
    return {"accuracy": result.final["accuracy"],
            "epoch_seconds": epoch_seconds(stamps, args.steps_per_epoch, begin["probe"]["wall"]),
            **loop_facts(begin["probe"], begin["end"])}


def run_trainer(args: argparse.Namespace) -> dict:
    import numpy as np
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments, set_seed)
    from transformers.utils import logging as hf_logging

    from tunesmith.models.sources import resolve_source

    hf_logging.set_verbosity_error()
    location = resolve_source("demo:minilm").location
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=2)
    frozen = [model.bert.embeddings, *model.bert.encoder.layer[:FROZEN_GROUPS - 1]]
    for module in frozen:
        module.requires_grad_(False)

    def dataset(path):
        texts, labels = read_tsv(Path(path))
        return _Rows(tokenizer(texts, truncation=True, max_length=MAX_LENGTH), labels)

    train, dev = dataset(args.train_file), dataset(args.dev_file)
    stamps: list[tuple[int, float]] = []
    probes: dict = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            probes["begin"] = probe()

        def on_step_end(self, a, state, control, **kw):
            stamps.append((state.global_step, time.perf_counter()))

        def on_train_end(self, a, state, control, **kw):
            probes["end"] = probe()

    training_args = TrainingArguments(
        output_dir=str(OUT / "runs" / f"cache-trainer-{args.run_id}"), max_steps=args.steps_per_epoch * args.epochs,
        per_device_train_batch_size=BATCH_SIZE, per_device_eval_batch_size=EVAL_BATCH_SIZE,
        learning_rate=args.learning_rate, lr_scheduler_type="linear", warmup_steps=args.warmup_steps,
        weight_decay=WEIGHT_DECAY, seed=args.seed, eval_strategy="no", save_strategy="no", report_to="none",
        use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=training_args, train_dataset=train,
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=[Clock()])
    trainer.train()
    predicted = trainer.predict(dev)
    return {"accuracy": float((np.argmax(predicted.predictions, -1) == predicted.label_ids).mean()),
            "epoch_seconds": epoch_seconds(stamps, args.steps_per_epoch, probes["begin"]["wall"]),
            **loop_facts(probes["begin"], probes["end"])}


def spawn(arm: str, run_id: str, args: argparse.Namespace, train_file: Path, log) -> dict:
    result_file = OUT / f"cache-result-{arm}-{run_id}.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--worker", arm, "--run-id", run_id, "--result-file", str(result_file),
               "--train-file", str(train_file), "--dev-file", str(Path(args.data_dir) / "dev.tsv"),
               "--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps_per_epoch),
               "--warmup-steps", str(args.warmup_steps), "--learning-rate", str(args.learning_rate),
               "--seed", str(args.seed)]
    print(f"{arm} run {run_id}: started", file=sys.stderr, flush=True)
    proc = subprocess.run(command, stdout=log, stderr=log, cwd=REPO)
    if proc.returncode != 0 or not result_file.exists():
        sys.exit(f"{arm} run {run_id} failed (exit {proc.returncode}); see {OUT / 'activation_cache.log'}")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    print(f"{arm} run {run_id}: accuracy {result['accuracy']:.4f}, epochs "
          f"{', '.join(f'{s:.0f}s' for s in result['epoch_seconds'])}, peak RSS {result['peak_rss_mib']:.0f} MiB, "
          f"other processes took {result['other_processes_cpu_share']:.0%} of the CPUs", file=sys.stderr, flush=True)
    return result


def table(runs: list[dict]) -> str:
    def med(arm, fn):
        return statistics.median(fn(r) for r in runs if r["arm"] == arm)

    first = {arm: med(arm, lambda r: r["epoch_seconds"][0]) for arm in ARMS}
    later = {arm: med(arm, lambda r: statistics.mean(r["epoch_seconds"][1:])) for arm in ARMS}
    lines = ["| | dev accuracy | epoch 1 | later epochs (mean) | peak RSS | other processes' CPU share |",
             "|---|---|---|---|---|---|"]
    for arm in ARMS:
        lines.append(f"| {arm} | {med(arm, lambda r: r['accuracy']):.4f} | {first[arm]:.0f} s | {later[arm]:.0f} s | "
                     f"{med(arm, lambda r: r['peak_rss_mib']):.0f} MiB | "
                     f"{med(arm, lambda r: r['other_processes_cpu_share']):.0%} |")
    lines.append(f"\nlater epochs: cache {later['no-cache'] / later['cache']:.2f}x faster than no cache, "
                 f"{later['trainer'] / later['cache']:.2f}x faster than Trainer; epoch 1 (recording): "
                 f"{first['cache'] / first['no-cache']:.2f}x the uncached time")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data/sst2", help="SST-2 train.tsv/dev.tsv folder")
    parser.add_argument("--train-rows", type=int, default=8000, help="seeded sample of training rows")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the three runs, alternating")
    for hidden in ("--worker", "--run-id", "--result-file", "--train-file", "--dev-file", "--warmup-steps",
                   "--steps-per-epoch"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.warmup_steps, args.steps_per_epoch = int(args.warmup_steps), int(args.steps_per_epoch)
        result = (run_trainer if args.worker == "trainer" else run_tunesmith)(args)
        result.update(arm=args.worker, run_id=args.run_id, peak_rss_mib=peak_rss_mib())
        Path(args.result_file).write_text(json.dumps(result, indent=2), encoding="utf-8")
        return
    data_dir = Path(args.data_dir) if Path(args.data_dir).is_absolute() else REPO / args.data_dir
    if not (data_dir / "train.tsv").is_file() or not (data_dir / "dev.tsv").is_file():
        sys.exit(f"SST-2 not found in {data_dir} (train.tsv, dev.tsv); pass --data-dir")
    args.data_dir = str(data_dir)
    OUT.mkdir(parents=True, exist_ok=True)
    train_file, rows = training_file(data_dir, args.train_rows, args.seed)
    args.steps_per_epoch = math.ceil(rows / BATCH_SIZE)
    args.warmup_steps = int(WARMUP_RATIO * args.steps_per_epoch * args.epochs)
    print(f"{rows} rows, {args.epochs} epochs of {args.steps_per_epoch} steps, {FROZEN_GROUPS} groups frozen",
          file=sys.stderr, flush=True)
    runs = []
    with (OUT / "activation_cache.log").open("w") as log:
        for i in range(args.repeats):
            for arm in ARMS:
                runs.append(spawn(arm, str(i), args, train_file, log))
    report = {"machine": machine(), "command": " ".join([".venv/bin/python", "benchmarks/activation_cache.py",
                                                        *sys.argv[1:]]),
              "settings": {"train_rows": rows, "epochs": args.epochs, "frozen_groups": FROZEN_GROUPS,
                           "batch_size": BATCH_SIZE, "learning_rate": args.learning_rate, "seed": args.seed},
              "runs": runs}
    (OUT / "activation_cache.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table(runs))


if __name__ == "__main__":
    main()
