"""The training curve: how the validation metric moved *during* training, per arm, over training seeds.

Each trained run's `metrics.jsonl` gives the metric at its `baseline` record (step 0: the model
before its first step, the untrained start for `scratch`) and at every `eval` record. Over the
seeds of an arm (`compare.arm_seeds`) the curves are averaged step by step (`over_seeds`), and
each seed's curve is summed up in two numbers (`summarize_arm`): `area`, the step-weighted mean
of the metric (trapezoid rule, divided by the step span, so in the metric's units), and, with
`compare.threshold`, `steps_to_threshold`, the first eval step at which the metric reached it.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from tunesmith.report.overfitting import read_records

Curve = list[tuple[int, float]]  # (step, metric) in increasing step


def run_curve(records: list[dict[str, Any]], metric: str) -> Curve:
    """The metric at the baseline (step 0) and at every evaluation of one run, by step."""
    points: dict[int, float] = {}
    for r in records:
        if r.get("phase") in ("baseline", "eval") and isinstance(r.get(metric), int | float):
            points[int(r["step"])] = float(r[metric])  # an eval at the baseline's step replaces it
    return sorted(points.items())


def eval_count(records: list[dict[str, Any]], metric: str) -> int:
    """How many evaluations during training logged the metric (the baseline not counted)."""
    return sum(1 for r in records if r.get("phase") == "eval" and isinstance(r.get(metric), int | float))


def over_seeds(curves: list[Curve]) -> list[dict[str, Any]]:
    """[{step, mean, std, seeds}] over the seeds' curves, on the union of their steps.

    The same config gives every seed the same steps; when they differ (early stopping ends one
    seed sooner), a seed's last value is carried forward to the steps it did not log, and a step
    before a seed's first point leaves that seed out (`seeds` counts who is in).
    """
    steps = sorted({step for curve in curves for step, _ in curve})
    out = []
    for step in steps:
        values = [v for v in (_value_at(curve, step) for curve in curves) if v is not None]
        out.append({"step": step, "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0, "seeds": len(values)})
    return out


def _value_at(curve: Curve, step: int) -> float | None:
    """The curve's value at `step`: the last point at or before it (None before its first point)."""
    earlier = [v for s, v in curve if s <= step]
    return earlier[-1] if earlier else None


def area(curve: Curve) -> float | None:
    """The area under metric-vs-step divided by the step span: the step-weighted mean metric.

    Trapezoid rule; one point is its own value; no points, None.
    """
    if not curve:
        return None
    span = curve[-1][0] - curve[0][0]
    if span == 0:
        return curve[-1][1]
    total = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in zip(curve, curve[1:]))
    return total / span


def steps_to_threshold(curve: Curve, threshold: float, greater_is_better: bool) -> int | None:
    """The first step at which the metric reached `threshold` (≥, or ≤ when lower is better); None if never."""
    return next((s for s, v in curve if (v >= threshold if greater_is_better else v <= threshold)), None)


def summarize_arm(curves: list[Curve], threshold: float | None, greater_is_better: bool) -> dict[str, Any]:
    """{area, area_std, steps_to_threshold, steps_to_threshold_std, reached, seeds} over one arm's seeds.

    `steps_to_threshold` is the mean over the seeds that reached the threshold (`reached`: "k/n"),
    its std None below two such seeds; both None when no threshold is set or no seed reached it.
    """
    areas = [a for a in (area(c) for c in curves) if a is not None]
    out: dict[str, Any] = {"area": statistics.fmean(areas) if areas else None,
                           "area_std": statistics.stdev(areas) if len(areas) > 1 else 0.0,
                           "steps_to_threshold": None, "steps_to_threshold_std": None, "reached": None,
                           "seeds": len(curves)}
    if threshold is not None:
        hits = [s for s in (steps_to_threshold(c, threshold, greater_is_better) for c in curves) if s is not None]
        out["reached"] = f"{len(hits)}/{len(curves)}"
        if hits:
            out["steps_to_threshold"] = statistics.fmean(hits)
            out["steps_to_threshold_std"] = statistics.stdev(hits) if len(hits) > 1 else None
    return out


def training_curves(runs: dict[str, list[Path]], metric: str, threshold: float | None,
                    greater_is_better: bool) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """(training_curve, curve_summary) for the arms' run folders, seed by seed.

    Both are empty when no arm evaluated at least twice during training: one evaluation after
    the baseline is a line between two points, nothing to compare arms on.
    """
    records = {arm: [read_records(d / "metrics.jsonl") for d in dirs] for arm, dirs in runs.items()}
    if not any(eval_count(r, metric) >= 2 for runs_of_arm in records.values() for r in runs_of_arm):
        return {}, {}
    curves = {arm: [run_curve(r, metric) for r in runs_of_arm] for arm, runs_of_arm in records.items()}
    curves = {arm: [c for c in cs if c] for arm, cs in curves.items() if any(cs)}
    return ({arm: over_seeds(cs) for arm, cs in curves.items()},
            {arm: summarize_arm(cs, threshold, greater_is_better) for arm, cs in curves.items()})
