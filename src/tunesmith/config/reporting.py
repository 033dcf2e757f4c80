"""Config sections for reporting beyond one run: `tracking` (TensorBoard, MLflow) and `compare`.

`compare` sets up `tunesmith compare`: which arms run (the pre-trained model as it is, a probe
on the frozen backbone, the configured fine-tune, the same architecture from scratch,
probe-then-fine-tune), their training seeds (`arm_seeds`, for the training curve) and the learning
curve's label fractions and seeds.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tunesmith.config._section import Section

Arm = Literal["pretrained", "probe", "finetune", "scratch", "probe_then_finetune"]
CurveArm = Literal["probe", "finetune", "scratch"]



class TrackingConfig(Section):
    tensorboard: bool = False
    """Write every logged record to TensorBoard event files in `<output_dir>/tensorboard`
    (`pip install 'tunesmith[tracking]'`; view with `tensorboard --logdir <output_dir>`)."""
    mlflow: bool = False
    """Log the config as parameters and every record as metrics to MLflow
    (`pip install 'tunesmith[tracking]'`)."""
    mlflow_tracking_uri: str | None = None
    """MLflow tracking store. `null` is a local file store in `<output_dir>/mlruns` (view with
    `mlflow ui --backend-store-uri <output_dir>/mlruns`); or a server URL or `sqlite:///...`."""
    mlflow_experiment: str = "tunesmith"
    """MLflow experiment the run is logged under."""


class CompareConfig(Section):
    arms: list[Arm] = Field(default=["pretrained", "probe", "finetune", "scratch"], min_length=1)
    """Rows of `tunesmith compare`: `pretrained` (the model as it is, before training), `probe`
    (only the head trains, on the frozen backbone), `finetune` (this config), `scratch` (the same
    architecture from random initialization), `probe_then_finetune` (fine-tune starting from the
    trained probe)."""
    probe_learning_rate: float = Field(1e-3, gt=0)
    """Learning rate of the probe (and of the probe stage of `probe_then_finetune`); a head on a
    frozen backbone takes a higher rate than a full fine-tune."""
    scratch_learning_rate: float | None = Field(None, gt=0)
    """Learning rate of the from-scratch arm; `null` uses `training.learning_rate`."""
    fractions: list[Annotated[float, Field(gt=0, le=1)]] | None = None
    """Learning curve: fractions of the training rows to train on (`[0.05, 0.1, 0.25, 0.5, 1.0]`),
    stratified by label and nested (each subset holds the smaller ones). `null`: no curve."""
    seeds: int = Field(1, ge=1)
    """Learning curve: repeats of every point, each with its own subset and training seed."""
    curve_arms: list[CurveArm] = Field(default=["probe", "finetune", "scratch"], min_length=1)
    """Learning curve: which arms are trained at every fraction."""
    arm_seeds: int = Field(1, ge=1)
    """Training seeds of every trained arm (`training.seed + i`): the table shows the mean over
    them (and `<metric>_std`), the training curve a band of one standard deviation. The first
    seed runs in `compare/<arm>/`, the others in `compare/seeds/seed<seed>/<arm>/`."""
    threshold: float | None = None
    """Training curve: the validation metric to reach (`>=`, or `<=` when lower is better); the
    summary gives each arm's first eval step at or past it (`steps_to_threshold`). `null`: none."""
