"""`update`: fine-tune a trained run on a newer period's data, and measure what it gained and what it forgot.

The parent is a run directory. Each arm is an ordinary `finetune` run in `<output>/<arm>/` with the
parent's own config (task, its section, columns, training and strategy settings); only the data and the
starting weights change:

- `stale`: the parent as it is, not trained (scored only);
- `update`: the parent's `best/` fine-tuned on the new rows;
- `replay`: the same on the new rows plus a seeded share of the parent's training rows;
- `l2sp`: the same with `strategy.l2_sp`, pulling the weights toward the parent's (strategies/anchor.py);
- `wise`: the update's weights interpolated toward the parent's, the mixing weight chosen on the
  validation rows of both periods (strategies/interpolation.py);
- `retrain`: the parent's own source trained on the old and new rows together (what an update saves);
- `scratch`: the parent's architecture from random weights, trained on the new rows only.

Every arm is scored on the new period's validation rows and, where known, on the old period's (the
parent's validation file, or `old_validation`): the forward gain is the change on the new period and
the backward transfer the change on the old, both against the stale parent. `update.json` holds the
table and the lineage (the parent, the data files with their SHA-256 and row counts); `summary.md` the table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunesmith.comparison.update_summary import table_markdown, table_rows
from tunesmith.data.period_files import is_table, joined_rows, sha256, split_rows
from tunesmith.data.readers import not_found
from tunesmith.engine.run_dir import cleared_outputs
from tunesmith.errors import DataError, RunDirError
from tunesmith.strategies.interpolation import interpolate, mismatch

log = logging.getLogger("tunesmith")

ARMS = ("update", "replay", "l2sp", "wise", "retrain", "scratch")  # besides `stale`; `update` always runs
ALPHAS = (0.25, 0.5, 0.75)  # WiSE-FT's mixing weights tried between the parent (0) and the update (1)
OUTPUTS = (*ARMS, "data", "update.json", "summary.md")


@dataclass
class UpdateArm:
    """One row: an arm's scores on the new and the old period, and its training time."""

    arm: str
    new: dict[str, Any]
    old: dict[str, Any] | None
    train_seconds: float | None = None
    run_dir: str | None = None
    note: str | None = None


@dataclass
class UpdateResult:
    """What `update` measured: a row per arm (`stale` first), the metric, the lineage and notes."""

    folder: Path
    metric: str
    greater_is_better: bool
    arms: list[UpdateArm]
    lineage: dict[str, Any]
    alpha: float | None = None
    notes: list[str] = field(default_factory=list)

    def row(self, arm: str) -> UpdateArm:
        return next(a for a in self.arms if a.arm == arm)

    @property
    def best_model_dir(self) -> Path:
        """The update's model: `<output>/update/best`."""
        return self.folder / "update" / "best"


def update(parent: str | Path, data: str | Path, output_dir: str | Path, validation: str | None = None,
           old_validation: str | None = None, arms: tuple[str, ...] = ARMS,
           replay_share: float = 0.25, l2_sp: float = 10.0, overrides: list[str] | None = None,
           overwrite: bool = False, quiet: bool = False) -> UpdateResult:
    """Fine-tunes the run `parent` on the new period's rows in `data` and scores every arm on both periods.

    Args:
        validation: the new period's validation rows; default a seeded `data.validation_split` of `data`.
        old_validation: the old period's; default the parent's `data.validation` file, if it had one.
        arms: which of the arms to run besides `stale` (`update` always runs: the guards build on it).
        replay_share: replayed old rows, as a share of the new training rows.
        l2_sp: the `strategy.l2_sp` strength of the l2sp arm.
        overrides: `key=value` overrides for every arm, as for `finetune`.

    Raises:
        RunDirError: `parent` is no run directory, or `output_dir` holds an earlier update and `overwrite` is off.
        DataError: a file is missing, or replay/retrain meet data that is not a table.
        ConfigError, ModelSourceError: as `finetune`.
    """
    parent = Path(parent).expanduser()
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise DataError(f"unknown arm {unknown[0]!r}; choose from {', '.join(ARMS)}")
    saved = _parent_config(parent)
    for path in (data, validation, old_validation):
        if path is not None and not Path(path).exists():
            raise DataError(not_found(Path(path)))
    folder = cleared_outputs(Path(output_dir).expanduser(), OUTPUTS, overwrite, "an update",
                             "choose another --output-dir or pass --overwrite")
    seed, old = saved["training"]["seed"], saved["data"]
    new_train, new_val = str(data), validation
    if new_val is None:
        new_train, new_val = split_rows(str(data), old.get("validation_split", 0.1), seed, folder / "data",
                                        _latest(saved))
    old_val = old_validation or (old.get("validation") if old.get("validation") else None)
    if old_val is not None and not Path(old_val).exists():
        raise DataError(not_found(Path(old_val), "the parent's validation file (the old period)"))
    scoring = _Scoring(new_val, old_val, overrides)
    result = UpdateResult(folder, "", True, [], _lineage(parent, saved, new_train, new_val, old_val))
    if old_val is None:
        result.notes.append("no old period scored: the parent held its validation rows out of its training file; "
                            "give --old-validation to measure what the update forgets")
    stale = scoring.arm("stale", parent)
    result.metric, result.greater_is_better = scoring.metric, scoring.greater
    result.arms.append(stale)
    runs = _arm_configs(parent, saved, new_train, new_val, arms, replay_share, l2_sp, folder, result.notes)
    for arm, raw in runs.items():
        log.info("update: %s", arm)
        result.arms.append(_train_and_score(arm, raw, folder / arm, scoring, overrides, quiet))
    if "wise" in arms:
        result.alpha = _wise(parent, folder, scoring, result)
    _write(result)
    for row in table_rows(result)[1][1:]:
        log.info("update: %s: forward gain %s, backward transfer %s", row[0], row[3] or "-", row[4] or "- (no old period)")
    return result


def _parent_config(parent: Path) -> dict[str, Any]:
    """The resolved config the parent run trained with.

    Raises:
        RunDirError: `parent` is not a run directory with a best model.
    """
    saved = parent / "config.yaml"
    if not saved.is_file() or not (parent / "best").is_dir():
        raise RunDirError(f"{parent} is not a tunesmith run directory with a best model (config.yaml and best/); "
                          "give the output_dir of a finished `tunesmith train`")
    return yaml.safe_load(saved.read_text(encoding="utf-8"))


def _latest(saved: dict[str, Any]) -> tuple[bool, str | None]:
    """(whether the new period's held-out rows are its latest, the time column): for a task whose class
    names, in `ordered_by`, the key of its section that holds the time column (recommendation)."""
    from tunesmith.tasks import task_class

    key = getattr(task_class(saved["task"]), "ordered_by", None)
    if key is None:
        return False, None
    return True, (saved.get(saved["task"].replace("-", "_")) or {}).get(key)


def _lineage(parent: Path, saved: dict[str, Any], *files: str | None) -> dict[str, Any]:
    def described(path: str | None) -> dict[str, Any] | None:
        return None if path is None or not Path(path).exists() else {"path": str(Path(path).resolve()), "sha256": sha256(path)}

    config_text = (parent / "config.yaml").read_bytes()
    return {"parent": str(parent.resolve()), "parent_config_sha256": hashlib.sha256(config_text).hexdigest(),
            "parent_train": described(saved["data"].get("train")), "new_train": described(files[0]),
            "new_validation": described(files[1]), "old_validation": described(files[2]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _arm_configs(parent: Path, saved: dict[str, Any], train: str, val: str, arms: tuple[str, ...], share: float,
                 l2_sp: float, folder: Path, notes: list[str]) -> dict[str, dict[str, Any]]:
    """Each trained arm's run config: the parent's, with its data, start and (l2sp) guard."""
    def arm(source: str, rows: str, pretrained: bool = True, **strategy: Any) -> dict[str, Any]:
        return {**saved, "model": {**saved["model"], "source": source, "pretrained": pretrained},
                "data": {**saved["data"], "train": rows, "validation": val},
                "strategy": {**saved["strategy"], **strategy}, "resume": None, "overwrite_output_dir": True}

    old_train, seed = saved["data"].get("train"), saved["training"]["seed"]
    runs = {"update": arm(str(parent), train)}
    joinable = old_train is not None and is_table(old_train) and is_table(train)
    if "replay" in arms:
        if joinable:
            runs["replay"] = arm(str(parent), joined_rows(train, old_train, share, seed, folder / "data" / "replay_train"))
        else:
            notes.append(f"replay skipped: the parent's training rows ({old_train}) and the new ones must both be tables")
    if "l2sp" in arms:
        if any((parent / "best" / f).is_file() for f in ("model.safetensors", "adapter_model.safetensors")):
            runs["l2sp"] = arm(str(parent), train, l2_sp=l2_sp)
        else:
            notes.append("l2sp skipped: the parent has no weights trained by gradient steps (boosted trees)")
    if "retrain" in arms:
        if joinable:
            runs["retrain"] = arm(saved["model"]["source"], joined_rows(train, old_train, None, seed, folder / "data" / "all_train"))
        else:
            notes.append("retrain skipped: the parent's training rows and the new ones must both be tables")
    if "scratch" in arms:
        runs["scratch"] = arm(str(parent), train, pretrained=False)
    return runs


class _Scoring:
    """Scores a run directory on the new and the old period's validation rows, with the parent's metric."""

    def __init__(self, new: str, old: str | None, overrides: list[str] | None):
        self.new, self.old, self.overrides = new, old, list(overrides or [])
        self.metric, self.greater = "loss", False

    def arm(self, name: str, run_dir: Path, seconds: float | None = None) -> UpdateArm:
        from tunesmith.config import load_config
        from tunesmith.run import evaluate

        config = load_config(run_dir / "config.yaml")
        self.metric, self.greater = config.metric, config.greater_is_better
        new = _scores(evaluate(str(run_dir), self.new, self.overrides))
        old = _scores(evaluate(str(run_dir), self.old, self.overrides)) if self.old else None
        return UpdateArm(name, new, old, seconds, str(run_dir))

    def value(self, arm: UpdateArm) -> float:
        """The arm's metric averaged over the periods scored, signed so that higher is better."""
        values = [arm.new[self.metric]] + ([arm.old[self.metric]] if arm.old else [])
        return (1 if self.greater else -1) * sum(values) / len(values)


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _train_and_score(arm: str, raw: dict[str, Any], folder: Path, scoring: _Scoring, overrides: list[str] | None,
                     quiet: bool) -> UpdateArm:
    from tunesmith.run import finetune

    result = finetune({**raw, "output_dir": str(folder)}, overrides, quiet=quiet)
    return scoring.arm(arm, result.run_dir, result.train_seconds)


def _wise(parent: Path, folder: Path, scoring: _Scoring, result: UpdateResult) -> float | None:
    """Scores the update's weights interpolated toward the parent's; keeps the best mixing weight in `wise/`."""
    tuned = folder / "update"
    why = mismatch(parent, tuned)
    if why is not None:
        result.notes.append(f"wise skipped: {why}")
        return None
    tried = {0.0: result.row("stale"), 1.0: result.row("update")}
    for alpha in ALPHAS:
        tried[alpha] = scoring.arm("wise", interpolate(parent, tuned, alpha, folder / "wise" / f"alpha-{alpha:.2f}"))
    alpha = max(sorted(tried), key=lambda a: scoring.value(tried[a]))
    chosen = interpolate(parent, tuned, alpha, folder / "wise" / "chosen")
    row = UpdateArm("wise", tried[alpha].new, tried[alpha].old, result.row("update").train_seconds, str(chosen),
                    note=f"alpha {alpha:g} of {', '.join(f'{a:g}' for a in sorted(tried))}, chosen on validation")
    result.arms.append(row)
    return alpha


def _write(result: UpdateResult) -> None:
    payload = {"metric": result.metric, "greater_is_better": result.greater_is_better, "alpha": result.alpha,
               "notes": result.notes, "lineage": result.lineage, "arms": [asdict(a) for a in result.arms]}
    (result.folder / "update.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    (result.folder / "summary.md").write_text(table_markdown(result), encoding="utf-8")
