"""Reusing a fine-tune that `tunesmith train` already wrote, instead of training the `finetune` arm again.

`train` and `compare` on one config share `output_dir`: the run sits in `output_dir` itself and
the comparison in `output_dir/compare/`. The `finetune` arm is the config as written, so when
`output_dir` holds a finished run (a `final` record and `best/`) whose saved `config.yaml`
matches the arm's config in every key that can change training, and whose data facts (row
counts per split) match this comparison's, that run is the arm's result. Every other case trains
the arm again, and the log says which it was and why.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tunesmith.comparison.arms import ArmResult, arm_metrics
from tunesmith.config import RunConfig, load_config
from tunesmith.errors import TunesmithError
from tunesmith.report.overfitting import overfitting_message, read_records, strategy_advice

log = logging.getLogger("tunesmith")

# Keys that say where a run goes and how it was started, not what it trains.
NOT_TRAINING = ("output_dir", "overwrite_output_dir", "resume", "compare")


def reusable_finetune(config: RunConfig, facts: dict[str, Any]) -> ArmResult | None:
    """The fine-tune arm read from the finished `train` run in `config.output_dir`, or None (train it)."""
    run_dir = Path(config.output_dir)
    records = read_records(run_dir / "metrics.jsonl")
    final = next((r for r in records if r.get("phase") == "final"), None)
    if final is None or not (run_dir / "config.yaml").exists() or not (run_dir / "best").exists():
        return None  # no finished run there
    why = _mismatch(run_dir, config, facts)
    if why:
        log.info("compare: %s holds a fine-tune, but %s; training the fine-tune arm again", run_dir, why)
        return None
    log.info("compare: reusing the fine-tune that train already wrote in %s (its config.yaml and data match "
             "the fine-tune arm); not training it again", run_dir)
    return _arm_from(run_dir, records, final, config, (facts.get("validation") or {}).get("rows"))


def _mismatch(run_dir: Path, config: RunConfig, facts: dict[str, Any]) -> str | None:
    """Why the saved run is not this comparison's fine-tune arm (None when it is)."""
    try:
        saved = load_config(run_dir / "config.yaml")
    except TunesmithError as exc:
        return f"its config.yaml no longer loads ({str(exc).splitlines()[0]})"
    ours, theirs = _training_keys(config.model_dump()), _training_keys(saved.model_dump())
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differ:
        return f"its config.yaml differs in {', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}"
    data = run_dir / "data.json"
    saved_facts = json.loads(data.read_text(encoding="utf-8")) if data.exists() else {}
    for split in ("train", "validation"):
        rows = (saved_facts.get(split) or {}).get("rows"), (facts.get(split) or {}).get("rows")
        if rows[0] != rows[1]:
            return f"it trained on other data ({rows[0]} {split} rows, the data now has {rows[1]})"
    return None


def _training_keys(dump: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The config as flat `section.key` values, without the keys that do not change training."""
    flat: dict[str, Any] = {}
    for key, value in dump.items():
        if not prefix and key in NOT_TRAINING:
            continue
        if isinstance(value, dict):
            flat.update(_training_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _arm_from(run_dir: Path, records: list[dict[str, Any]], final: dict[str, Any], config: RunConfig,
              rows: int | None) -> ArmResult:
    evals = [r for r in records if r.get("phase") == "eval"]
    state, t = _saved_state(run_dir), config.training
    message = overfitting_message(records, config.metric, config.greater_is_better,
                                  t.early_stopping_patience, bool(state.get("stopped_early")),
                                  rows=rows, advice=strategy_advice(config))
    return ArmResult("finetune", arm_metrics(final), state.get("train_seconds"), None,
                     max((r.get("trainable_params", 0) for r in evals), default=0), run_dir,
                     next((r["epoch"] for r in evals if r["step"] == final.get("best_step")), None), message)


def _saved_state(run_dir: Path) -> dict[str, Any]:
    """The loop state of the newest checkpoint (written at the last evaluation): training seconds,
    whether early stopping stopped the run. Empty when no checkpoint is left."""
    from tunesmith.engine.checkpoint import checkpoints

    found = checkpoints(run_dir / "checkpoints")
    state = found[0] / "state.json" if found else None
    return json.loads(state.read_text(encoding="utf-8")) if state and state.exists() else {}
