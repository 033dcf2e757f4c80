"""Hymenoptera (ants vs bees) with demo:efficientnet-lite0 on CPU: linear probe, fine-tune, from scratch.

Run by hand (not a test), from the repository root, with ../shared/data beside it:

    .venv/bin/python benchmarks/hymenoptera.py            # all three, ~15 minutes on 2 CPU cores
    .venv/bin/python benchmarks/hymenoptera.py --modes probe

Each mode runs in its own subprocess, so its peak memory (max RSS of the training process and of
its data-loader workers) is its own. Prints a Markdown table for benchmarks/RESULTS.md and writes
the raw numbers to benchmarks/out/hymenoptera-PRECISION.json (git-ignored).
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
DATA = REPO.parent / "shared" / "data" / "hymenoptera"

COMMON = {
    "task": "image-classification",
    "model": {"source": "demo:efficientnet-lite0"},
    "data": {"train": str(DATA)},  # train/ (245 images) and val/ (153 images)
    "training": {"num_train_epochs": 12, "per_device_train_batch_size": 16, "lr_scheduler_type": "cosine",
                 "weight_decay": 0.05, "early_stopping_patience": None, "seed": 0},
    "augmentation": {"preset": "light"},
}
MODES = {
    # Only the new head trains; the frozen backbone stays in eval mode (BatchNorm statistics fixed).
    "probe": {"strategy": {"freeze": "head_only"}, "training": {"learning_rate": 3e-3}},
    # Everything trains; lower stages learn more slowly.
    "finetune": {"strategy": {"layer_lr_decay": 0.8}, "training": {"learning_rate": 1e-3}},
    # The same architecture and recipe from random initialization.
    "scratch": {"model": {"pretrained": False}, "training": {"learning_rate": 3e-3}},
}


def merged(base: dict, extra: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in extra.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def run_one(mode: str, output_root: Path, precision: str = "auto") -> dict:
    """Runs one mode in this process and returns its numbers."""
    import tunesmith

    config = merged(merged(COMMON, MODES[mode]), {"training": {"mixed_precision": precision}})
    config.update(output_dir=str(output_root / mode), overwrite_output_dir=True)
    start = time.perf_counter()
    result = tunesmith.finetune(config, quiet=True)
    wall = time.perf_counter() - start
    evals = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "mode": mode, "precision": precision,
        "baseline_accuracy": result.baseline["accuracy"],
        "best_accuracy": result.final["accuracy"],
        "last_epoch_accuracy": [r["accuracy"] for r in evals if r["phase"] == "eval"][-1],
        "best_step": result.best_step,
        "train_seconds": round(result.train_seconds, 1),
        "wall_seconds": round(wall, 1),
        "samples_per_second": round(result.samples_per_second, 2),
        # ru_maxrss is in KiB on Linux
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "worker_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        # Other work on the machine slows training down; the 15-minute load average says how much.
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "config": config,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--precision", choices=("auto", "no", "bf16"), default="auto",
                        help="training.mixed_precision (auto: bf16 on a CPU with AMX or AVX512-BF16)")
    parser.add_argument("--output-root", default=str(REPO / "benchmarks" / "out" / "runs" / "hymenoptera"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, Path(args.output_root), args.precision)))
        return
    if not DATA.is_dir():
        sys.exit(f"hymenoptera not found at {DATA} (../shared/data beside the repository)")
    results = []
    for mode in args.modes:
        proc = subprocess.run([sys.executable, __file__, "--child", mode, "--output-root", args.output_root,
                               "--precision", args.precision],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{mode}: done", file=sys.stderr)
    out = REPO / "benchmarks" / "out" / f"hymenoptera-{args.precision}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    print("| run | val accuracy (best epoch) | last epoch | before training | train time | samples/s | peak RSS (main / loader worker) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['best_accuracy']:.4f} | {r['last_epoch_accuracy']:.4f} | {r['baseline_accuracy']:.4f} "
              f"| {r['train_seconds']:.0f} s | {r['samples_per_second']:.1f} | {r['peak_rss_mib']} / {r['worker_peak_rss_mib']} MiB |")


if __name__ == "__main__":
    main()
