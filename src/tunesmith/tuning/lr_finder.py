"""`lr_find`: the learning-rate range test (Smith, 2015; fastai's `lr_find`) on a throwaway model.

The model, data, frozen groups and per-group learning rates are set up as for training (every
group that will ever train is trainable). The head's rate then rises exponentially from
`start_lr` to `end_lr`, one optimizer step at a time, each lower group keeping its
`layer_lr_decay` ratio to the head, so the test runs on the discriminative rates training will
use. The loss is smoothed (a bias-corrected moving average) and the test stops when it diverges
(4x its minimum, or not finite). The suggestion is the head rate where the smoothed loss falls
fastest; the rate at the minimum divided by 10 is reported beside it, with the implied rate of
every group. The model is thrown away: only `lr_find.json` and `lr_find.png` are written, in
`<output_dir>/lr_find/` unless told otherwise. The result is a starting point, and the
`warnings` say when it is less reliable than usual.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig, load_config
from tunesmith.errors import ConfigError

log = logging.getLogger("tunesmith")


@dataclass
class LRFindResult:
    """The curve of a range test, the suggested head learning rate and the rates it implies per group."""

    suggested_lr: float | None
    """Head rate at the steepest fall of the smoothed loss (None when the loss never fell)."""
    min_loss_lr: float | None
    """Head rate at the lowest smoothed loss, divided by 10 (fastai's other rule of thumb)."""
    group_rates: dict[str, float | None]
    """Every layer group's rate at `suggested_lr` (None for a group that stays frozen)."""
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    stopped: str
    warnings: list[str] = field(default_factory=list)
    plot: Path | None = None
    json_path: Path | None = None


def lr_find(config: str | Path | dict | RunConfig, overrides: list[str] | None = None, steps: int = 100,
            start_lr: float = 1e-7, end_lr: float = 1.0, output: str | Path | None = None,
            diverge: float = 4.0) -> LRFindResult:
    """Runs the learning-rate range test and writes `lr_find.json` and `lr_find.png`.

    Args:
        config: The run config (path, dict or RunConfig); model, data, freezing and
            `layer_lr_decay` are used as training would use them.
        steps: Optimizer steps from `start_lr` to `end_lr` (the test may stop earlier).
        output: Folder for the JSON and the plot; default `<output_dir>/lr_find`.
        diverge: Stop once the smoothed loss exceeds this multiple of its minimum.

    Raises:
        ConfigError: a bad range (`start_lr` >= `end_lr`, not positive, fewer than 10 steps).
        DataError, ModelSourceError: as `finetune`.
    """
    if not 0 < start_lr < end_lr or steps < 10 or diverge <= 1:
        raise ConfigError([f"lr-find: need 0 < start_lr < end_lr, steps >= 10 and diverge > 1 (got start_lr={start_lr}, "
                           f"end_lr={end_lr}, steps={steps}, diverge={diverge})"])
    config = load_config(config, overrides)
    lrs = [start_lr * (end_lr / start_lr) ** (i / (steps - 1)) for i in range(steps)]
    task, groups, trainable, losses, epochs = _sweep(config, lrs, diverge)
    smoothed = smooth(losses)
    suggested, at_min = suggest(lrs[: len(smoothed)], smoothed)
    result = LRFindResult(suggested, at_min / 10 if at_min else None,
                          _group_rates(groups, trainable, suggested, config.strategy.layer_lr_decay),
                          lrs[: len(losses)], losses, smoothed, _stop_reason(losses, smoothed, steps, diverge))
    result.warnings = reliability_warnings(config, task, result, epochs)
    folder = Path(output) if output is not None else Path(config.output_dir) / "lr_find"
    _write(result, folder, config)
    return result


def smooth(losses: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average; stops at the first non-finite loss."""
    average, out = 0.0, []
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            break
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** (i + 1)))
    return out


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, float | None]:
    """(rate at the steepest fall of the smoothed loss before its minimum, rate at the minimum).

    The slope is taken against log10(rate) over the points from a tenth of the way in (the
    moving average is still settling before that) up to the minimum.
    """
    if len(smoothed) < 5:
        return None, None
    lowest = min(range(len(smoothed)), key=smoothed.__getitem__)
    start = max(1, len(smoothed) // 10)
    if lowest <= start:
        return None, lrs[lowest]
    logs = [math.log10(lr) for lr in lrs]
    slopes = {i: (smoothed[i + 1] - smoothed[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(start, lowest)}
    steepest = min(slopes, key=lambda i: slopes[i])
    return (lrs[steepest] if slopes[steepest] < 0 else None), lrs[lowest]


def _sweep(config: RunConfig, lrs: list[float], diverge: float):
    """Trains a fresh copy of the model at each rate in turn; returns the raw loss of every step."""
    import torch

    from tunesmith.engine.accelerator import make_accelerator
    from tunesmith.engine.batching import make_loader
    from tunesmith.engine.optimizer import make_optimizer
    from tunesmith.recipe import built, prepared
    from tunesmith.strategies.freezing import apply_freezing, freeze_floor
    from tunesmith.tasks import read_rows

    t, s = config.training, config.strategy
    config, task = prepared(config)
    model = built(task, config)  # the model the fine-tune trains: LoRA adapters included when lora.enabled
    accelerator = make_accelerator(config, accumulation=config.training.gradient_accumulation_steps)  # for `_step`
    groups = task.layer_groups(model)
    lowest = freeze_floor(len(groups), s.freeze)
    apply_freezing(model, groups, lowest, s.freeze_groups)
    optimizer = make_optimizer(groups, config)
    ratios = [g["lr"] / t.learning_rate for g in optimizer.param_groups]  # per-group share of the head rate
    data = task.dataset(read_rows(task.train_rows, "training"), train=True)
    loader = make_loader(data, task.collate, t.per_device_train_batch_size * accelerator.num_processes, t.seed,
                         train=True, lengths=task.lengths(data), group_by_length=t.group_by_length,
                         num_workers=t.dataloader_num_workers)
    sampler = loader.batch_sampler
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    batches, losses = _forever(loader, sampler, data), []
    log.info("lr-find: %d steps from %.1e to %.1e on %d training rows", len(lrs), lrs[0], lrs[-1], len(data))
    for lr in lrs:
        for group, ratio in zip(optimizer.param_groups, ratios):
            group["lr"] = lr * ratio
        losses.append(_step(task, model, optimizer, batches, accelerator, t.max_grad_norm or math.inf))
        smoothed = smooth(losses)
        if len(smoothed) < len(losses) or smoothed[-1] > diverge * min(smoothed):
            break
    del model, optimizer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return task, groups, lowest, losses, sampler.epoch + 1


def _forever(loader, sampler, data) -> Iterator[dict[str, Any]]:
    """Training batches epoch after epoch, each epoch in its seeded order."""
    from tunesmith.tasks import EpochDataset

    epoch = 0
    while True:
        sampler.start_epoch(epoch)
        if isinstance(data, EpochDataset):
            data.set_epoch(epoch)
        yield from loader
        epoch += 1


def _step(task, model, optimizer, batches: Iterator[dict[str, Any]], accelerator, max_grad_norm: float) -> float:
    """One optimizer step (over `gradient_accumulation_steps` micro-batches); returns its mean loss."""
    total, count = 0.0, 0
    while True:
        batch = next(batches)
        with accelerator.accumulate(model):
            loss, _ = task.loss(model, batch)
            accelerator.backward(loss)
            total, count = total + float(loss.detach()), count + 1
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            return total / count


def _group_rates(groups, lowest: int, head_lr: float | None, decay: float) -> dict[str, float | None]:
    from tunesmith.strategies.learning_rates import group_learning_rates

    if head_lr is None:
        return {g.name: None for g in groups}
    rates = group_learning_rates(len(groups), head_lr, decay)
    return {g.name: (rate if i >= lowest else None) for i, (g, rate) in enumerate(zip(groups, rates))}


def _stop_reason(losses: list[float], smoothed: list[float], steps: int, diverge: float) -> str:
    if len(smoothed) < len(losses):
        return f"the loss became NaN/inf at step {len(smoothed) + 1}"
    if len(losses) < steps:
        return f"the smoothed loss passed {diverge:g}x its minimum at step {len(losses)}"
    return "reached end_lr without diverging"


def reliability_warnings(config: RunConfig, task, result: LRFindResult, epochs: int) -> list[str]:
    """Reasons to trust this suggestion less than usual (see docs/tuning.md)."""
    t, s, a = config.training, config.strategy, config.augmentation
    rows = len(task.train_rows)
    notes = []
    if result.suggested_lr is None:
        notes.append("the smoothed loss never fell: there is no suggestion; widen the range or check the data")
    if epochs > 1:
        notes.append(f"the test went {epochs} times through the {rows} training rows: part of the fall in loss is "
                     "memorizing them, which makes higher rates look better than they are")
    if rows < 500:
        notes.append(f"only {rows} training rows: the loss is noisy and the curve is rough")
    if s.gradual_unfreezing:
        notes.append("gradual unfreezing is on: the test trains every group that will ever train at once, while the "
                     "first epochs train fewer groups and tolerate higher rates")
    if config.task.startswith("image") and (a.preset == "strong" or a.mixup_alpha > 0 or a.cutmix_alpha > 0):
        notes.append("strong augmentation or mixup/cutmix make the loss noisy; the curve is harder to read")
    if t.label_smoothing_factor > 0.1 or (config.model.dropout or 0) > 0.2:
        notes.append("heavy regularization (label smoothing, dropout) flattens the curve")
    if result.stopped.startswith("reached end_lr"):
        notes.append("the loss did not diverge before end_lr: the whole useful range may not have been covered")
    return notes


def _write(result: LRFindResult, folder: Path, config: RunConfig) -> None:
    from tunesmith.report.lr_find_plot import lr_find_plot

    folder.mkdir(parents=True, exist_ok=True)
    result.plot = lr_find_plot(result, folder / "lr_find.png")
    result.json_path = folder / "lr_find.json"
    record = {k: v for k, v in asdict(result).items() if k not in ("plot", "json_path")}
    record.update(model=config.model.source, layer_lr_decay=config.strategy.layer_lr_decay,
                  freeze=config.strategy.freeze, per_device_train_batch_size=config.training.per_device_train_batch_size)
    result.json_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
