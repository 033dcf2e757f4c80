"""demo:smollm2 LoRA instruction tuning with packing: tunesmith against Hugging Face Trainer + PEFT.

Run by hand (not a test), from the repository root, with SST-2 in ../shared/data/sst2:

    .venv/bin/python benchmarks/smollm2_lora_vs_trainer.py                     # 200 train / 100 dev rows
    .venv/bin/python benchmarks/smollm2_lora_vs_trainer.py --train-rows 48 --eval-rows 16   # smoke

Both arms train SmolLM2-135M-Instruct (the GGUF weights de-quantized to float, loaded the same way)
with the same LoRA adapters (r 8, alpha 16, dropout 0.05 on q/k/v/o projections), on the same token
ids (tunesmith's chat rendering, loss on the answers only), with the same batch size, epochs,
learning rate, linear schedule with 10% warm-up, weight decay, gradient clipping and seed, and
both pack each batch into one row whose position ids restart at every example (tunesmith's
`causal_lm.packing`; Trainer's `DataCollatorWithFlattening`). The task is the one of
smollm2_sst2_lora.py: answer an SST-2 review with exactly "positive" or "negative".

Each arm runs in its own subprocess (peak resident memory is its own); throughput is training rows
(and tokens) per second of the training loop (for tunesmith without the end-of-epoch evaluation and
adapter saves, which are timed and subtracted; Trainer evaluates and saves nothing in its loop). Prints a Markdown table; raw numbers go to
benchmarks/out/smollm2_lora_vs_trainer.json.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time

from _arms import in_loop_seconds, run_arms, time_loop_extras
from smollm2_sst2_lora import DATA, OUT, write_jsonl

LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def tunesmith_config(args: argparse.Namespace) -> dict:
    return {
        "task": "causal-lm", "output_dir": str(OUT / "runs" / f"smollm2-vs-trainer-{args.arm}"),
        "overwrite_output_dir": True, "model": {"source": "demo:smollm2"},
        "data": {"train": str(OUT / "smollm2_vs_trainer_train.jsonl"),
                 "validation": str(OUT / "smollm2_vs_trainer_dev.jsonl"), "max_length": 192},
        "training": {"num_train_epochs": 1, "learning_rate": 1e-3, "per_device_train_batch_size": 8,
                     "per_device_eval_batch_size": 8, "warmup_steps": warmup_steps(args), "weight_decay": 0.01,
                     "max_grad_norm": 1.0, "early_stopping_patience": None, "seed": 0},
        "lora": {"enabled": True, "merge": False, **LORA},  # Trainer does not merge either (a deep copy at the end)
        "causal_lm": {"packing": True, "generate_on_eval": False},
    }


def warmup_steps(args: argparse.Namespace) -> int:
    """10% of one epoch's optimizer steps, as the same whole number for both arms."""
    return int(0.1 * math.ceil(args.train_rows / 8))


def run_tunesmith(args: argparse.Namespace) -> dict:
    import tunesmith

    spent = time_loop_extras()
    result = tunesmith.finetune(tunesmith_config(args), quiet=True)
    in_loop = in_loop_seconds(spent)
    tokens = sum(len(f["input_ids"]) for f in _features(args)[0])
    return {"train_seconds": result.train_seconds - in_loop, "loop_clock_seconds": result.train_seconds,
            "dev_loss": result.final["loss"], "dev_loss_before": result.baseline["loss"], "tokens": tokens}


def _features(args: argparse.Namespace):
    """tunesmith's token ids for the training and validation rows (the same for both arms)."""
    from tunesmith.config import load_config
    from tunesmith.tasks import get_task

    task = get_task(load_config(tunesmith_config(args)))
    task.preflight()
    task.load_tokenizer()
    train = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in task.dataset(task.train_rows, train=True)]
    dev = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in task.dataset(task.eval_rows, train=False)]
    return train, dev, task


def run_trainer(args: argparse.Namespace) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorWithFlattening, Trainer, TrainingArguments, set_seed

    train, dev, task = _features(args)
    set_seed(0)
    model = get_peft_model(task.build_model(), LoraConfig(
        task_type="CAUSAL_LM", r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
        target_modules=LORA["target_modules"]))
    t = tunesmith_config(args)["training"]
    training_args = TrainingArguments(
        output_dir=str(OUT / "runs" / "smollm2-vs-trainer-trainer"), num_train_epochs=t["num_train_epochs"],
        per_device_train_batch_size=t["per_device_train_batch_size"], per_device_eval_batch_size=8,
        learning_rate=t["learning_rate"], lr_scheduler_type="linear", warmup_steps=t["warmup_steps"],
        weight_decay=t["weight_decay"], max_grad_norm=t["max_grad_norm"], seed=0, eval_strategy="no",
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithFlattening())
    before = trainer.evaluate()["eval_loss"]
    out = trainer.train()
    return {"train_seconds": out.metrics["train_runtime"], "dev_loss": trainer.evaluate()["eval_loss"],
            "dev_loss_before": before, "tokens": sum(len(f["input_ids"]) for f in train)}


def child(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    result = (run_tunesmith if args.arm == "tunesmith" else run_trainer)(args)
    result.update(arm=args.arm, rows=args.train_rows, wall_seconds=time.perf_counter() - start,
                  samples_per_second=args.train_rows / result["train_seconds"],
                  tokens_per_second=result["tokens"] / result["train_seconds"],
                  peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=200)
    parser.add_argument("--eval-rows", type=int, default=100)
    parser.add_argument("--arm", choices=["tunesmith", "trainer"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        child(args)
        return
    if not (DATA / "train.tsv").is_file():
        sys.exit(f"SST-2 not found at {DATA} (../shared/data beside the repository)")
    OUT.mkdir(parents=True, exist_ok=True)
    write_jsonl(DATA / "train.tsv", args.train_rows, 0, OUT / "smollm2_vs_trainer_train.jsonl")
    write_jsonl(DATA / "dev.tsv", args.eval_rows, 1, OUT / "smollm2_vs_trainer_dev.jsonl")
    runs = run_arms(__file__, OUT / "smollm2_lora_vs_trainer.json")
    a, b = runs["tunesmith"], runs["trainer"]
    print("| | samples/s | tokens/s | dev loss per answer token (before) | peak RSS |\n|---|---|---|---|---|")
    for name, r in (("tunesmith", a), ("Trainer + PEFT", b)):
        print(f"| {name} | {r['samples_per_second']:.2f} | {r['tokens_per_second']:.0f} | {r['dev_loss']:.4f} "
              f"({r['dev_loss_before']:.4f}) | {r['peak_rss_mib']} MiB |")
    print(f"| **tunesmith / Trainer** | **{a['samples_per_second'] / b['samples_per_second']:.2f}x** | "
          f"{a['tokens_per_second'] / b['tokens_per_second']:.2f}x | | {a['peak_rss_mib'] / b['peak_rss_mib']:.2f}x |")


if __name__ == "__main__":
    main()
