"""Cell nuclei segmentation with demo:mobilenet-v2 + LR-ASPP on CPU: fine-tune, frozen trunk, from scratch.

Run by hand (not a test), from the repository root, with ../shared/data beside it:

    .venv/bin/python benchmarks/nuclei_segmentation.py              # all four, ~15 minutes on 2 CPU cores
    .venv/bin/python benchmarks/nuclei_segmentation.py --modes frozen_trunk scratch

The data is ../shared/data/nuclei_dsb2018 (2018 Data Science Bowl, COCO polygons; 160 train / 40
validation images, fixed split). Every mode has the same budget (epochs, batch, crops, seed) and runs
in its own subprocess, so its peak memory is its own. Prints a Markdown table for
benchmarks/RESULTS.md and writes the raw numbers to benchmarks/out/nuclei-segmentation.json (git-ignored).
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
DATA = REPO.parent / "shared" / "data" / "nuclei_dsb2018"

COMMON = {
    "task": "image-segmentation",
    "model": {"source": "demo:mobilenet-v2"},
    "data": {"train": str(DATA / "annotations" / "instances_train.json"),
             "validation": str(DATA / "annotations" / "instances_val.json")},
    "image_segmentation": {"image_root": str(DATA / "images"), "vflip": True},
    "training": {"num_train_epochs": 5, "per_device_train_batch_size": 8, "early_stopping_patience": None, "seed": 0},
}
MODES = {
    # tunesmith's defaults: everything trains at 1e-3.
    "finetune": {},
    # Lower stages learn more slowly (0.8 per group down from the head).
    "finetune_lr_decay": {"strategy": {"layer_lr_decay": 0.8}},
    # Only the new LR-ASPP head trains on the frozen ImageNet trunk (BatchNorm statistics fixed).
    "frozen_trunk": {"strategy": {"freeze": "head_only"}},
    # The same architecture and recipe from random initialization.
    "scratch": {"model": {"pretrained": False}},
}


def merged(base: dict, extra: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in extra.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def run_one(mode: str, output_root: Path) -> dict:
    """Runs one mode in this process and returns its numbers."""
    import tunesmith

    config = merged(COMMON, MODES[mode])
    config.update(output_dir=str(output_root / mode), overwrite_output_dir=True)
    start = time.perf_counter()
    result = tunesmith.finetune(config, quiet=True)
    wall = time.perf_counter() - start
    evals = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "mode": mode,
        "baseline": {k: result.baseline[k] for k in ("miou", "dice", "pixel_accuracy")},
        "best": {k: result.final[k] for k in ("miou", "dice", "pixel_accuracy")},
        "dice_by_epoch": [round(r["dice"], 4) for r in evals if r["phase"] == "eval"],
        "best_step": result.best_step,
        "train_seconds": round(result.train_seconds, 1),
        "wall_seconds": round(wall, 1),
        "samples_per_second": round(result.samples_per_second, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # KiB on Linux
        "worker_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],  # other work on the machine slows runs
        "config": config,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--output-root", default=str(REPO / "benchmarks" / "out" / "runs" / "nuclei"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, Path(args.output_root))))
        return
    if not DATA.is_dir():
        sys.exit(f"nuclei_dsb2018 not found at {DATA} (../shared/data beside the repository)")
    results = []
    out = REPO / "benchmarks" / "out" / "nuclei-segmentation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    for mode in args.modes:
        proc = subprocess.run([sys.executable, __file__, "--child", mode, "--output-root", args.output_root],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")  # after each mode
        print(f"{mode}: done", file=sys.stderr)
    print("| run | Dice (best epoch) | mIoU | pixel acc. | Dice by epoch | before training (Dice / mIoU) | train time "
          "| images/s | peak RSS (main / worker) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        b, f = r["baseline"], r["best"]
        print(f"| {r['mode']} | {f['dice']:.4f} | {f['miou']:.4f} | {f['pixel_accuracy']:.4f} "
              f"| {', '.join(f'{d:.3f}' for d in r['dice_by_epoch'])} | {b['dice']:.4f} / {b['miou']:.4f} "
              f"| {r['train_seconds']:.0f} s | {r['samples_per_second']:.1f} "
              f"| {r['peak_rss_mib']} / {r['worker_peak_rss_mib']} MiB |")


if __name__ == "__main__":
    main()
