"""Experiment tracking by config switch: every logged record also goes to TensorBoard and/or MLflow.

Records already flow through `History` (train, baseline, eval and final records); `open_trackers`
returns the callback History calls for each, so the training loop knows nothing of trackers.
Both libraries are optional (`pip install 'tunesmith[tracking]'`) and imported only when switched
on; switched on but missing is a `ConfigError` that says what to install. MLflow is used through
`MlflowClient` (no global active run), by default with a local file store in `<run_dir>/mlruns`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.engine.run_dir import flatten
from tunesmith.errors import ConfigError

log = logging.getLogger("tunesmith")

OnRecord = Callable[[dict[str, Any]], None]
SKIP = {"step", "time", "best_step", "nan_skips"}


def record_scalars(record: dict[str, Any]) -> dict[str, float]:
    """`phase/key` -> value for a record's finite numbers, plus `lr/<group>` for per-group rates
    and `baseline/features/<metric>` for the baseline's linear probe."""
    phase = record.get("phase", "record")
    scalars = {f"{phase}/{k}": float(v) for k, v in record.items()
               if k not in SKIP and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
    scalars.update({f"lr/{group}": float(v) for group, v in (record.get("lrs") or {}).items()})
    if record.get("features"):  # the baseline's linear probe of the pre-trained features (engine/evaluation.py)
        scalars.update(record_scalars({**record["features"], "phase": f"{phase}/features"}))
    return scalars


@contextlib.contextmanager
def open_trackers(config: RunConfig, run_dir: Path, enabled: bool = True) -> Iterator[OnRecord | None]:
    """The trackers the config switches on, as one record callback (None when none is on).

    Raises:
        ConfigError: a tracker is switched on but its package is not installed.
    """
    t = config.tracking
    trackers: list[Any] = []
    failed = True
    try:
        if enabled and t.tensorboard:
            trackers.append(TensorBoardTracker(run_dir / "tensorboard", config))
        if enabled and t.mlflow:
            trackers.append(MlflowTracker(config, run_dir))
        yield (lambda record: _log_to_all(trackers, record)) if trackers else None
        failed = False
    finally:
        for tracker in trackers:
            tracker.close(failed)


def _log_to_all(trackers: list[Any], record: dict[str, Any]) -> None:
    for tracker in trackers:
        try:
            tracker.log(record)
        except Exception as exc:  # noqa: BLE001 - a tracking outage must not end a long training run
            if not getattr(tracker, "failed", False):
                log.warning("%s logging failed (%s); training goes on, later records may be missing there",
                            type(tracker).__name__.removesuffix("Tracker"), exc)
                tracker.failed = True


def _missing(switch: str, package: str) -> ConfigError:
    return ConfigError([f"tracking.{switch} is on but the {package} package is not installed; install it with "
                        f"pip install 'tunesmith[tracking]' (or pip install {package}), or set tracking.{switch}: false"])


class TensorBoardTracker:
    """Scalars per record at its step, and the config as text, in TensorBoard event files."""

    def __init__(self, folder: Path, config: RunConfig):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        import yaml

        self.writer = SummaryWriter(log_dir=str(folder))
        config_text = yaml.safe_dump(config.model_dump(), sort_keys=False)
        self.writer.add_text("config", "```\n" + config_text + "\n```", 0)

    def log(self, record: dict[str, Any]) -> None:
        for key, value in record_scalars(record).items():
            self.writer.add_scalar(key, value, record.get("step", 0), walltime=record.get("time"))

    def close(self, failed: bool) -> None:
        self.writer.close()


class MlflowTracker:
    """One MLflow run: the flattened config as parameters, every record's scalars as metrics."""

    def __init__(self, config: RunConfig, run_dir: Path):
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Param
        except ImportError:
            raise _missing("mlflow", "mlflow") from None
        t = config.tracking
        uri = t.mlflow_tracking_uri or (run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 refuses file stores unless asked; a local folder beside the run is what we want.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(t.mlflow_experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(t.mlflow_experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name,
                                             tags={"tunesmith.run_dir": str(run_dir.resolve())}).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flatten(config.model_dump()).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        stamp = int(1000 * record.get("time", 0))
        metrics = [Metric(k, v, stamp, record.get("step", 0)) for k, v in record_scalars(record).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")

