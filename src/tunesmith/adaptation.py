"""`tunesmith adapt`: a trained model to shifted conditions (fog, night, another scanner) without labels.

A network with BatchNorm normalises every layer with the mean and variance it saw in training; under
a shift of the inputs those statistics are wrong, and much of the accuracy lost is lost there. Two
label-free adaptations, both on a folder (or file) of unlabelled target rows:

- `batchnorm` (AdaBN, Li et al. 2016; Schneider et al. 2020): every BatchNorm layer's running mean
  and variance are estimated afresh on the target rows, as a cumulative average over one pass with no
  gradient; no weight changes.
- `tent` (Wang et al. 2021): the same, then the BatchNorm scales and shifts (nothing else) take Adam
  steps that lower the entropy of the predictions on target batches, normalised by each batch's own
  statistics, for `epochs` passes; then the statistics are estimated once more for the model as saved.
  Entropy minimisation can collapse onto one class: the guard follows the entropy of the mean
  prediction (averaged over batches) and, once it falls below half of where it started, restores the
  scales and shifts of the last good step and stops. Single-label classifiers only (it reads logits).

The adapted model is written in the same layout as the source (`best/` of a run directory loads the
same way), with the run's `config.yaml` beside it so evaluate and predict know the task; a temperature
fitted on the source's validation split no longer holds, so no `calibration.json` is carried over.
With `evaluate` (a labelled target file) the source and the adapted model are both scored on it.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger("tunesmith")

METHODS = ("batchnorm", "tent")
COLLAPSE_SHARE = 0.5  # tent stops once the mean prediction's entropy falls below this share of its start


@dataclass
class AdaptResult:
    """What `adapt` wrote and, given a labelled target file, how the source and the adapted model score on it."""

    output: Path
    method: str
    target_rows: int
    batchnorm_layers: int
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    stopped: str | None = None
    """tent: why it stopped before its last step (the collapse guard), else None."""


def adapt(model: str, data: str, output: str | Path, method: str = "batchnorm", evaluate: str | None = None,
          overrides: list[str] | None = None, epochs: int = 1, learning_rate: float = 1e-3) -> AdaptResult:
    """Adapts a trained model to the unlabelled rows of `data` and writes it to `output`.

    Raises:
        ConfigError: an unknown method, or tent on a task that is no single-label classifier.
        ModelSourceError: the model has no BatchNorm layer (nothing to adapt).
        RunDirError: `output` exists and is not empty.
    """
    from tunesmith import run
    from tunesmith.engine.checkpoint import atomic_folder
    from tunesmith.errors import ConfigError, RunDirError
    from tunesmith.tasks import read_rows

    if method not in METHODS:
        raise ConfigError([f"method: {method!r} is not one of {', '.join(METHODS)}"])
    out = Path(output).expanduser()
    if out.exists() and any(out.iterdir()):
        raise RunDirError(f"{out} exists and is not empty; choose another --output or remove it")
    config = run._inference_config(model, overrides, validation=data)
    task = run._inference_task(config, labelled=False)
    if method == "tent" and getattr(task, "calibration", None) is None:  # the single-label classifiers have one
        raise ConfigError([f"method: tent minimises the entropy of class predictions; {config.task} is not a "
                           "single-label classifier; use method batchnorm"])
    net, accelerator, loader = run._inference_model(task, config, labelled=False)
    layers = batchnorm_layers(net, model)
    forward = lambda batch: task.forward(net, batch)  # noqa: E731 - the one call both methods make
    reestimate(net, layers, loader, forward)
    stopped = tent(net, layers, loader, forward, epochs, learning_rate) if method == "tent" else None
    if method == "tent":
        reestimate(net, layers, loader, forward)
    net.eval()
    with atomic_folder(out) as tmp:
        task.save(accelerator.unwrap_model(net), str(tmp))
        saved = _run_config(model)
        if saved is not None:
            shutil.copy(saved, tmp / "config.yaml")
    rows = len(read_rows(task.eval_rows, "target"))
    log.info("%s: %d BatchNorm layers adapted (%s) on %d target rows; written to %s", model, len(layers), method,
             rows, out)
    result = AdaptResult(out, method, rows, len(layers), stopped=stopped)
    if evaluate is not None:
        result.before = run.evaluate(model, evaluate, overrides)
        result.after = run.evaluate(str(out), evaluate, overrides)
    return result


def _run_config(model: str) -> Path | None:
    """The `config.yaml` of the run a model folder belongs to (in it, or beside `best/`)."""
    path = Path(model).expanduser()
    for candidate in (path / "config.yaml", path.parent / "config.yaml" if path.name == "best" else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def batchnorm_layers(net: nn.Module, source: str) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer that keeps running statistics.

    Raises:
        ModelSourceError: there is none.
    """
    from tunesmith.errors import ModelSourceError

    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not layers:
        raise ModelSourceError(f"{source} has no BatchNorm layer, so there are no statistics to re-estimate on the "
                               "target rows; fine-tune it on a few labelled target rows instead (tunesmith train)")
    return layers


@torch.no_grad()
def reestimate(net: nn.Module, layers: list[nn.modules.batchnorm._BatchNorm], loader, forward) -> None:
    """Replaces each layer's running mean and variance by their cumulative average over one pass of `loader`."""
    net.eval()
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts alike
        m.train()
    for batch in loader:
        forward(batch)
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    net.eval()


def tent(net: nn.Module, layers: list[nn.modules.batchnorm._BatchNorm], loader, forward, epochs: int,
         learning_rate: float) -> str | None:
    """Entropy minimisation on the BatchNorm scales and shifts; returns why it stopped early, or None."""
    affine = [p for m in layers for p in (m.weight, m.bias) if p is not None]
    trains = {p: p.requires_grad for p in net.parameters()}
    for p in net.parameters():
        p.requires_grad_(False)
    for p in affine:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(affine, lr=learning_rate)
    net.eval()
    for m in layers:
        m.train()  # normalise each batch by its own statistics, as tent does
    start: float | None = None
    marginal: torch.Tensor | None = None  # the mean prediction, averaged over batches (0.8 old, 0.2 new)
    good, reason = [p.detach().clone() for p in affine], None
    try:
        for epoch in range(epochs):
            for step, batch in enumerate(loader):
                logits = forward(batch).float()
                probs = logits.softmax(-1)
                entropy = -(probs * logits.log_softmax(-1)).sum(-1).mean()
                batch_mean = probs.mean(0).detach()
                marginal = batch_mean if marginal is None else 0.8 * marginal + 0.2 * batch_mean
                spread = float(-(marginal * marginal.clamp_min(1e-12).log()).sum())
                start = spread if start is None else start
                if spread < COLLAPSE_SHARE * start and not math.isclose(start, 0):
                    reason = (f"collapse guard at epoch {epoch + 1}, batch {step + 1}: the mean prediction's entropy "
                              f"fell from {start:.3f} to {spread:.3f}; the last good step was kept")
                    with torch.no_grad():
                        for p, saved in zip(affine, good):
                            p.copy_(saved)
                    log.warning("tent: %s", reason)
                    return reason
                good = [p.detach().clone() for p in affine]
                optimizer.zero_grad()
                entropy.backward()
                optimizer.step()
        return None
    finally:
        for p, flag in trains.items():
            p.requires_grad_(flag)
        net.eval()
