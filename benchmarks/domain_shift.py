"""Ants vs bees under fog, low light and sensor noise: `tunesmith adapt` without labels (issue 23).

Run by hand (not a test), from the repository root, with ../shared/data beside it:

    .venv/bin/python benchmarks/domain_shift.py                        # fine-tunes first, ~10 minutes
    .venv/bin/python benchmarks/domain_shift.py --model benchmarks/out/calibration/hymenoptera

The source model is demo:efficientnet-lite0 fine-tuned on the clear training photos (the recipe of
benchmarks/calibration.py, or a run given with --model). Each condition is applied with a fixed seed to
the 245 training photos, the unlabelled target pool adaptation sees, and to the 153 val photos, the
labelled target test set it never sees:

- fog: each pixel 0.35 of itself, the rest light grey (200);
- low light: pixels x 0.3, then gamma 1.4 (darker shadows);
- noise: Gaussian, sigma 40 of 255, per pixel and channel.

Per condition: the source model on clear val, on the shifted val, then after `adapt` with
`batchnorm` (statistics re-estimated) and with `tent` (one epoch, Adam 1e-3). Prints a Markdown table for
benchmarks/RESULTS.md; the shifted images go to benchmarks/out/shifted (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hymenoptera"
OUT = REPO / "benchmarks" / "out"


def fog(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 0.35 * x + 0.65 * 200


def low_light(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 255 * (0.3 * x / 255) ** 1.4


def noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0, 40, size=x.shape)


CONDITIONS = {"fog": fog, "low light": low_light, "noise": noise}


def shifted(split: str, name: str) -> Path:
    """The split's class folders under the condition, written once (seed 0 per condition)."""
    from PIL import Image

    target = OUT / "shifted" / name.replace(" ", "_") / split
    if target.is_dir():
        return target
    rng = np.random.default_rng(0)
    for path in sorted((DATA / split).rglob("*.jpg")):
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
        out = target / path.parent.name / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(CONDITIONS[name](pixels, rng), 0, 255).astype(np.uint8)).save(out, quality=92)
    return target


def source_model() -> str:
    import tunesmith

    config = {"task": "image-classification", "model": {"source": "demo:efficientnet-lite0"},
              "data": {"train": str(DATA / "train"), "validation_split": 0.2},
              "strategy": {"layer_lr_decay": 0.8}, "augmentation": {"preset": "light"},
              "training": {"num_train_epochs": 12, "learning_rate": 1e-3, "per_device_train_batch_size": 16,
                           "lr_scheduler_type": "cosine", "weight_decay": 0.05, "early_stopping_patience": None,
                           "seed": 0},
              "output_dir": str(OUT / "domain_shift" / "source"), "overwrite_output_dir": True}
    return str(tunesmith.finetune(config, quiet=True).run_dir)


def main() -> None:
    import tunesmith

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a fine-tuned hymenoptera run directory (default: fine-tune one)")
    args = parser.parse_args()
    model = args.model or source_model()
    clear = tunesmith.evaluate(model, str(DATA / "val"))
    results = []
    for name in CONDITIONS:
        pool, test = shifted("train", name), shifted("val", name)
        row = {"condition": name, "clear": clear["accuracy"]}
        for method in ("batchnorm", "tent"):
            out = OUT / "domain_shift" / f"{name.replace(' ', '_')}-{method}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            result = tunesmith.adapt(model, str(pool), out, method, evaluate=str(test))
            row["shifted"], row["shifted_loss"] = result.before["accuracy"], result.before["loss"]
            row[method], row[f"{method}_loss"] = result.after["accuracy"], result.after["loss"]
            row[f"{method}_seconds"] = round(time.perf_counter() - start, 1)
        results.append(row)
        print(json.dumps(row))
    (OUT / "domain_shift.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| condition | clear val | shifted, unadapted | + batchnorm | + tent | loss: unadapted → batchnorm → tent |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['condition']} | {r['clear']:.3f} | {r['shifted']:.3f} | {r['batchnorm']:.3f} | {r['tent']:.3f} | "
              f"{r['shifted_loss']:.3f} → {r['batchnorm_loss']:.3f} → {r['tent_loss']:.3f} |")


if __name__ == "__main__":
    main()
