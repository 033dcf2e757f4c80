"""demo:efficientnet-lite0 with a frozen backbone on ants vs bees: tunesmith against Hugging Face Trainer.

Run by hand (not a test), from the repository root, with ../shared/data/hymenoptera beside it:

    .venv/bin/python benchmarks/images_vs_trainer.py              # 4 epochs each
    .venv/bin/python benchmarks/images_vs_trainer.py --epochs 1   # smoke
    .venv/bin/python benchmarks/images_vs_trainer.py --augmentation none   # + tunesmith without the cache
    .venv/bin/python benchmarks/images_vs_trainer.py --augmentation none --freeze 5   # bottom half frozen

Both arms train only the new classifier of the same pre-trained EfficientNet-Lite0 (a linear
probe), on the same 245 training images through the same decoding and transforms (tunesmith's
dataset, light augmentation, 224 px), with the same batch size, epochs, learning rate, cosine
schedule without warm-up, weight decay and seed; accuracy on the 153 validation images.
tunesmith: `strategy.freeze: head_only`, so the frozen backbone runs in eval mode (BatchNorm
statistics fixed). Trainer: the backbone's parameters get `requires_grad=False`, what a Trainer user
writes; `model.train()` then still updates its BatchNorm statistics. Each arm runs in its own
subprocess, so its peak memory is its own; throughput is training images per second of the training
loop (tunesmith's end-of-epoch evaluations and saves are timed and taken out). Prints a Markdown
table; raw numbers go to benchmarks/out/images_vs_trainer[-none].json.

With `--augmentation none` every epoch sees the same pixels, so tunesmith's activation cache records
the frozen backbone's features in epoch 1 and later epochs only run the classifier (and decode no
images); a third arm runs tunesmith with `training.activation_cache: off` to show what the cache buys.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

from _arms import in_loop_seconds, run_arms, time_loop_extras

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
DATA = REPO.parent / "shared" / "data" / "hymenoptera"
ARMS = ("tunesmith", "trainer", "tunesmith-no-cache")
TRAIN_IMAGES = 245


def config_for(args: argparse.Namespace) -> dict:
    return {"task": "image-classification", "output_dir": str(OUT / "runs" / f"images-vs-trainer-{args.arm}"),
            "overwrite_output_dir": True, "model": {"source": "demo:efficientnet-lite0"},
            "data": {"train": str(DATA)},
            "training": {"num_train_epochs": args.epochs, "per_device_train_batch_size": 16, "learning_rate": 3e-3,
                         "lr_scheduler_type": "cosine", "warmup_steps": 0, "weight_decay": 0.05,
                         "early_stopping_patience": None, "seed": 0, "dataloader_num_workers": 0, "logging_steps": 1,
                         "activation_cache": "off" if args.arm == "tunesmith-no-cache" else "auto"},
            "strategy": {"freeze": args.freeze}, "augmentation": {"preset": args.augmentation}}


def run_tunesmith(args: argparse.Namespace) -> dict:
    import tunesmith
    from tunesmith.engine.progress import ProgressDisplay

    spent = time_loop_extras()
    stamps: list[tuple[int, float]] = []
    original_update = ProgressDisplay.update

    def on_update(self, step, epoch, loss=None, lr=None):  # called after every step (logging_steps 1)
        if step:
            stamps.append((step, time.perf_counter()))
        return original_update(self, step, epoch, loss, lr)

    ProgressDisplay.update = on_update
    result = tunesmith.finetune(config_for(args), quiet=True)
    return {"train_seconds": result.train_seconds - in_loop_seconds(spent), "accuracy": result.final["accuracy"],
            "accuracy_before": result.baseline["accuracy"],
            "epoch_seconds": epoch_seconds(stamps, math.ceil(TRAIN_IMAGES / 16))}


def epoch_seconds(stamps: list[tuple[int, float]], steps_per_epoch: int) -> list[float]:
    """Training seconds per epoch from per-step time stamps, from epoch 2 on: the steps' intervals
    within the epoch, its first step counted at the epoch's median (its interval holds the evaluation
    before it). Epoch 1 has no stamp before its first step, so it is left out."""
    seconds = []
    for first in range(steps_per_epoch, len(stamps) - 1, steps_per_epoch):
        times = [t for _, t in stamps[first - 1 : first + steps_per_epoch]]
        gaps = sorted(b - a for a, b in zip(times[1:], times[2:]))
        seconds.append(sum(gaps) + (gaps[len(gaps) // 2] if gaps else 0.0))
    return seconds


def run_trainer(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch.nn.functional as F
    from torch import nn
    from transformers import Trainer, TrainingArguments, set_seed

    from tunesmith.config import load_config
    from tunesmith.tasks import get_task

    task = get_task(load_config(config_for(args)))
    task.preflight()
    set_seed(0)
    backbone = task.build_model()
    groups = task.layer_groups(backbone)
    frozen = {id(p) for g in groups[: len(groups) - 1 if args.freeze == "head_only" else args.freeze] for _, p in g.params}
    for p in backbone.parameters():
        p.requires_grad = id(p) not in frozen

    class Classifier(nn.Module):  # what Trainer needs: a forward that returns the loss
        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model

        def forward(self, pixel_values, labels=None):
            logits = self.model(pixel_values)
            return {"loss": F.cross_entropy(logits, labels), "logits": logits}

    train, val = task.dataset(task.train_rows, train=True), task.dataset(task.eval_rows, train=False)
    t = config_for(args)["training"]
    trainer = Trainer(model=Classifier(backbone), train_dataset=train, eval_dataset=val, data_collator=task.collate,
                      args=TrainingArguments(
                          output_dir=str(OUT / "runs" / "images-vs-trainer-trainer"), num_train_epochs=t["num_train_epochs"],
                          per_device_train_batch_size=16, per_device_eval_batch_size=64, learning_rate=t["learning_rate"],
                          lr_scheduler_type="cosine", warmup_steps=0, weight_decay=t["weight_decay"], seed=0,
                          eval_strategy="no", save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
                          dataloader_num_workers=0, remove_unused_columns=False))

    def accuracy() -> float:
        predicted = trainer.predict(val)
        return float((np.argmax(predicted.predictions, -1) == predicted.label_ids).mean())

    before = accuracy()
    out = trainer.train()
    return {"train_seconds": out.metrics["train_runtime"], "accuracy": accuracy(), "accuracy_before": before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--augmentation", choices=["light", "none"], default="light")
    parser.add_argument("--freeze", type=lambda v: v if v == "head_only" else int(v), default="head_only",
                        help="head_only (a linear probe) or the number of bottom layer groups to freeze")
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        start = time.perf_counter()
        result = (run_trainer if args.arm == "trainer" else run_tunesmith)(args)
        images = TRAIN_IMAGES * args.epochs
        result.update(arm=args.arm, epochs=args.epochs, images_per_second=images / result["train_seconds"],
                      wall_seconds=time.perf_counter() - start,
                      peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
        print(json.dumps(result))
        return
    if not (DATA / "train").is_dir():
        sys.exit(f"hymenoptera not found at {DATA} (../shared/data beside the repository)")
    OUT.mkdir(parents=True, exist_ok=True)
    arms = ARMS if args.augmentation == "none" else ARMS[:2]
    suffix = ("-none" if args.augmentation == "none" else "") + ("" if args.freeze == "head_only" else f"-freeze{args.freeze}")
    runs = run_arms(__file__, OUT / f"images_vs_trainer{suffix}.json", arms)
    a, b = runs["tunesmith"], runs["trainer"]
    print("| | val accuracy (before) | images/s | peak RSS |\n|---|---|---|---|")
    names = {"tunesmith": "tunesmith", "trainer": "HF Trainer", "tunesmith-no-cache": "tunesmith, cache off"}
    for arm in arms:
        r = runs[arm]
        print(f"| {names[arm]} | {r['accuracy']:.4f} ({r['accuracy_before']:.4f}) | {r['images_per_second']:.1f} "
              f"| {r['peak_rss_mib']} MiB |")
    for arm in arms:
        if runs[arm].get("epoch_seconds"):
            print(f"{names[arm]}: seconds of training per epoch after the first: "
                  + ", ".join(f"{s:.2f}" for s in runs[arm]["epoch_seconds"]))
    print(f"| **tunesmith / Trainer** | {a['accuracy'] - b['accuracy']:+.4f} | "
          f"**{a['images_per_second'] / b['images_per_second']:.2f}x** | {a['peak_rss_mib'] / b['peak_rss_mib']:.2f}x |")


if __name__ == "__main__":
    main()
