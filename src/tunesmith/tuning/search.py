"""`tune`: hyper-parameter search with Optuna over the keys in the config's `search.space`.

Every trial is an ordinary `tunesmith.finetune` run in `<output_dir>/trials/trial-<n>/` with the
trial's values applied to the config, so each has its own metrics, `best/` and report. Each
evaluation's `metric_for_best_model` is reported to Optuna, and a median pruner stops trials that
fall behind (the pruned run ends cleanly, its lock released). The study lives in SQLite
(`<output_dir>/study.db`) or any RDB URL: running `tune` again continues it, trials left running
by a killed process are marked failed, and several machines can work on one study. After each
trial the results table (`tune_results.csv`) is rewritten; at the end the best trial's config is
written as `best_config.yaml`, ready for `tunesmith train`.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunesmith.config.search import ParamSpace, parse_space
from tunesmith.config import RunConfig, load_config
from tunesmith.engine.run_dir import process_alive
from tunesmith.errors import ConfigError, NonFiniteLossError, TrainingInterrupted
from tunesmith.tuning.results import TrialRow, trial_rows, write_best_config, write_results

log = logging.getLogger("tunesmith")

HEARTBEAT_SECONDS = 60
# A trial whose process has not been heard from for this long is marked failed by the next worker.
GRACE_SECONDS = 300


@dataclass
class TuneResult:
    """What a search found: every trial of the study so far, and the best one."""

    folder: Path
    study_name: str
    storage: str
    metric: str
    trials: list[TrialRow]
    best: TrialRow | None
    best_config: Path | None
    results_file: Path

    @property
    def best_model_dir(self) -> Path | None:
        return self.best.run_dir / "best" if self.best else None


def tune(config: str | Path | dict | RunConfig, overrides: list[str] | None = None, quiet: bool = False) -> TuneResult:
    """Searches `search.space` for the settings with the best validation `metric_for_best_model`.

    Args:
        config: The run config (path, dict or RunConfig); its `search` section sets the search.
        overrides: `key=value` overrides, as for `finetune` (`search.n_trials=30`).
        quiet: No progress bars in the trials.

    Raises:
        ConfigError: `search.space` is empty, or the storage cannot be opened or holds a study
            that optimizes in the other direction.
        DataError, ModelSourceError: as `finetune`, before any trial starts.
        TrainingInterrupted: SIGTERM or Ctrl-C stopped the search; running `tune` again continues it.
    """
    import optuna

    from tunesmith.recipe import prepared

    config = load_config(config, overrides)
    spaces, _ = parse_space(config)
    if not spaces:
        raise ConfigError(["search.space is empty: add the keys to search, e.g. search.space: "
                           "{training.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}}"])
    prepared(config)  # bad config or data fails now, not in every trial
    folder = Path(config.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are logged here, one line each
    study, storage_url = open_study(config, folder)
    _fail_orphans(study)
    s, finished = config.search, _finished(study)
    if finished < s.n_trials:
        log.info("study %r in %s: %d of %d trials done, running up to %d more", study.study_name, storage_url,
                 finished, s.n_trials, s.n_trials - finished)
        objective = make_objective(config, spaces, folder, quiet)

        def record(study, trial) -> None:
            write_results(trial_rows(study, folder), folder, config)

        study.optimize(objective, n_trials=s.n_trials - finished, gc_after_trial=True,
                       timeout=s.timeout_minutes * 60 if s.timeout_minutes else None,
                       catch=_trial_failures(),
                       callbacks=[optuna.study.MaxTrialsCallback(s.n_trials, states=_counted()), record])
    else:
        log.info("study %r already holds %d finished trials (search.n_trials=%d); raise search.n_trials to run more",
                 study.study_name, finished, s.n_trials)
    rows = trial_rows(study, folder)
    results_file = write_results(rows, folder, config)
    best = _best(rows, config.greater_is_better)
    best_config = None
    if best is not None:
        best_config = write_best_config(trial_config(config, best.params, folder / "best-run", fresh=True), best, folder)
    return TuneResult(folder, study.study_name, storage_url, config.metric, rows, best,
                      best_config, results_file)


def open_study(config: RunConfig, folder: Path):
    """The study in `search.storage` (created or loaded), with a seeded sampler and the pruner.

    Raises:
        ConfigError: the storage cannot be opened, or its study optimizes in the other direction.
    """
    import optuna

    s = config.search
    url = s.storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    name = s.study_name or folder.resolve().name
    direction: Literal["maximize", "minimize"] = "maximize" if config.greater_is_better else "minimize"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.9
            storage = optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url),
                                                 heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True,
                                    pruner=_pruner(config))
    except ImportError as exc:
        raise ConfigError([f"search.storage {url!r} needs a database driver that is not installed ({exc.name}); "
                           f"install it (pip install {exc.name})"]) from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy and Optuna raise many kinds; all mean "cannot open"
        raise ConfigError([f"search.storage: cannot open {url!r} ({type(exc).__name__}: {exc}); give a writable "
                           "SQLite path (sqlite:///path/study.db) or a reachable database URL"]) from None
    if study.direction.name.lower() != direction:
        raise ConfigError([f"study {name!r} in {url} maximizes/minimizes the other way "
                           f"({study.direction.name.lower()}) than training.metric_for_best_model="
                           f"{config.training.metric_for_best_model!r} needs; use another search.study_name"])
    study.sampler = _sampler(config, len(study.trials), shared=s.storage is not None)
    return study, url


def make_objective(config: RunConfig, spaces: list[ParamSpace], folder: Path, quiet: bool) -> Callable:
    """The function Optuna calls per trial: sample the values, fine-tune, return the best metric."""
    from tunesmith.run import finetune

    metric = config.metric

    def objective(trial) -> float:
        values = {space.key: suggest(trial, space) for space in spaces}
        run_dir = folder / "trials" / f"trial-{trial.number}"
        for key, value in (("run_dir", str(run_dir)), ("host", socket.gethostname()), ("pid", os.getpid())):
            trial.set_user_attr(key, value)
        log.info("trial %d: %s", trial.number, ", ".join(f"{k}={_show(v)}" for k, v in values.items()))
        watch = PruningWatch(trial, metric, config.search.pruning)
        try:
            result = finetune(trial_config(config, values, run_dir), quiet=quiet, on_record=watch)
        except TrainingInterrupted as exc:
            raise TrainingInterrupted(f"the search was stopped during trial {trial.number}; run tunesmith tune "
                                      "with the same config again to continue the study", exc.exit_code) from None
        except NonFiniteLossError as exc:
            log.warning("trial %d failed: %s", trial.number, str(exc).split(";")[0])
            raise
        score = float(result.final[metric])
        log.info("trial %d: %s %.4f", trial.number, metric, score)
        return score

    return objective


def suggest(trial, space: ParamSpace) -> Any:
    """The trial's value for one searched key."""
    if space.choices is not None:
        return trial.suggest_categorical(space.key, list(space.choices))
    if space.integer:
        return trial.suggest_int(space.key, space.low, space.high, step=space.step or 1, log=space.log)
    return trial.suggest_float(space.key, space.low, space.high, step=space.step, log=space.log)


def trial_config(config: RunConfig, values: dict[str, Any], run_dir: Path, fresh: bool = False) -> RunConfig:
    """The base config with a trial's values, writing to `run_dir` (replacing what is there unless `fresh`)."""
    raw = config.model_dump()
    for key, value in values.items():
        section, name = key.split(".", 1)
        raw[section][name] = value
    raw.update(output_dir=str(run_dir), overwrite_output_dir=not fresh, resume=None)
    return load_config(raw)


class PruningWatch:
    """A record callback: reports each evaluation's metric to the trial and prunes when Optuna says so."""

    def __init__(self, trial, metric: str, pruning: bool):
        self.trial, self.metric, self.pruning = trial, metric, pruning
        self.evals = 0

    def __call__(self, record: dict[str, Any]) -> None:
        import optuna

        if record.get("phase") != "eval":
            return
        value = record.get(self.metric)
        step, self.evals = self.evals, self.evals + 1  # Optuna step = evaluation index, comparable across trials
        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), step)
        if self.pruning and self.trial.should_prune():
            log.info("trial %d pruned at evaluation %d: %s %.4f is behind earlier trials", self.trial.number,
                     step + 1, self.metric, value)
            raise optuna.TrialPruned(f"{self.metric} {value:.4f} at evaluation {step + 1}")


def _pruner(config: RunConfig):
    import optuna

    s = config.search
    if not s.pruning:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=s.pruning_startup_trials, n_warmup_steps=s.pruning_warmup_evals)


def _sampler(config: RunConfig, trials_so_far: int, shared: bool):
    """TPE, seeded from `training.seed` and the study's size, so a resumed study does not replay its
    first proposals; on a shared storage the process id is mixed in, so workers propose different values."""
    import optuna

    seed = config.training.seed + trials_so_far + (os.getpid() if shared else 0)
    startup = max(3, min(10, config.search.n_trials // 3))  # fine-tuning studies are small: model sooner
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def _fail_orphans(study) -> None:
    """Marks failed the trials this machine left running in a process that no longer exists (a crash
    or kill -9). Trials of other machines are failed by Optuna once their heartbeat is stale."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") == host and isinstance(pid, int) and pid != os.getpid() and not process_alive(pid):
            log.warning("trial %d was left running by process %d, which is gone; marking it failed", trial.number, pid)
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)



def _finished(study) -> int:
    return len(study.get_trials(deepcopy=False, states=_counted()))


def _counted() -> tuple:
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


def _trial_failures() -> tuple[type[Exception], ...]:
    """Errors that fail one trial and let the search go on: a diverged run, a batch too big for the GPU."""
    import torch

    return (NonFiniteLossError, torch.OutOfMemoryError)


def _best(rows: list[TrialRow], greater: bool) -> TrialRow | None:
    complete = [(r.value if greater else -r.value, r) for r in rows if r.state == "complete" and r.value is not None]
    if not complete:
        return None
    return max(complete, key=lambda pair: pair[0])[1]


def _engine_kwargs(url: str) -> dict[str, Any]:
    # SQLite: the heartbeat thread and the trial write from two connections; wait for the lock.
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def _show(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
