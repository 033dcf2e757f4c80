"""The training curve: the metric per eval step from metrics.jsonl, over seeds, its area and steps to a threshold."""

from __future__ import annotations

import json

import pytest

from tunesmith.comparison.training_curve import (
    area, eval_count, over_seeds, run_curve, steps_to_threshold, summarize_arm, training_curves)


def records(*points, final=0.9) -> list[dict]:
    """metrics.jsonl records: a baseline at the first (step, accuracy), evals at the others, a final."""
    (step0, value0), *evals = points
    out = [{"phase": "baseline", "step": step0, "epoch": 0.0, "accuracy": value0, "loss": 1.0}]
    out += [{"phase": "train", "step": s, "train_loss": 0.5} for s, _ in evals]
    out += [{"phase": "eval", "step": s, "epoch": s / 10, "accuracy": v, "loss": 1 - v} for s, v in evals]
    return out + [{"phase": "final", "step": evals[-1][0] if evals else step0, "accuracy": final}]


def test_run_curve_takes_the_baseline_as_step_0_and_every_eval():
    rows = records((0, 0.5), (10, 0.7), (20, 0.8))
    assert run_curve(rows, "accuracy") == [(0, 0.5), (10, 0.7), (20, 0.8)]
    assert run_curve(rows, "loss") == [(0, 1.0), (10, pytest.approx(0.3)), (20, pytest.approx(0.2))]
    assert eval_count(rows, "accuracy") == 2 and eval_count(rows, "no_such_metric") == 0


def test_area_is_the_step_weighted_mean():
    assert area([(0, 0.0), (10, 1.0)]) == pytest.approx(0.5)  # a straight line from 0 to 1
    # 0..10 at 0.5 → 0.7 (mean 0.6), 10..30 at 0.7 → 0.9 (mean 0.8): (10 * 0.6 + 20 * 0.8) / 30
    assert area([(0, 0.5), (10, 0.7), (30, 0.9)]) == pytest.approx((6 + 16) / 30)
    assert area([(5, 0.4)]) == 0.4 and area([]) is None
    assert area([(0, 0.8), (10, 0.8), (20, 0.8)]) == pytest.approx(0.8)  # in the metric's units


def test_steps_to_threshold_in_both_directions():
    rising = [(0, 0.5), (10, 0.7), (20, 0.8), (30, 0.75)]
    assert steps_to_threshold(rising, 0.7, True) == 10  # reaching it counts
    assert steps_to_threshold(rising, 0.79, True) == 20
    assert steps_to_threshold(rising, 0.9, True) is None
    falling = [(0, 1.2), (10, 0.6), (20, 0.4)]
    assert steps_to_threshold(falling, 0.6, False) == 10
    assert steps_to_threshold(falling, 0.1, False) is None
    assert steps_to_threshold(falling, 2.0, False) == 0  # the untrained start already is below it


def test_mean_and_std_over_seeds():
    curve = over_seeds([[(0, 0.5), (10, 0.7)], [(0, 0.5), (10, 0.9)]])
    assert [p["step"] for p in curve] == [0, 10] and [p["seeds"] for p in curve] == [2, 2]
    assert curve[0]["mean"] == 0.5 and curve[0]["std"] == 0.0
    assert curve[1]["mean"] == pytest.approx(0.8) and curve[1]["std"] == pytest.approx(0.02 ** 0.5)
    assert over_seeds([[(0, 0.5), (10, 0.7)]])[1] == {"step": 10, "mean": 0.7, "std": 0.0, "seeds": 1}


def test_seeds_with_other_steps_are_aligned_with_the_last_value_carried_forward():
    stopped_early = [(0, 0.5), (10, 0.7)]
    full = [(0, 0.5), (10, 0.9), (20, 0.9), (30, 1.0)]
    curve = over_seeds([stopped_early, full])
    assert [p["step"] for p in curve] == [0, 10, 20, 30]
    assert curve[2]["mean"] == pytest.approx(0.8) and curve[3]["mean"] == pytest.approx(0.85)
    late = over_seeds([[(5, 0.6)], [(0, 0.4), (5, 0.8)]])
    assert late[0] == {"step": 0, "mean": 0.4, "std": 0.0, "seeds": 1}  # no value before a seed's first point


def test_summarize_arm_over_seeds():
    curves = [[(0, 0.5), (10, 0.7), (20, 0.9)], [(0, 0.5), (10, 0.5), (20, 0.7)]]
    summary = summarize_arm(curves, 0.7, True)
    assert summary["area"] == pytest.approx((0.7 + 0.55) / 2) and summary["area_std"] == pytest.approx(0.15 / 2 ** 0.5)
    assert summary["steps_to_threshold"] == 15 and summary["reached"] == "2/2" and summary["seeds"] == 2
    never = summarize_arm(curves, 0.95, True)
    assert never["steps_to_threshold"] is None and never["reached"] == "0/2"
    assert summarize_arm(curves, None, True)["reached"] is None


def test_training_curves_need_two_evaluations(tmp_path):
    def run(name, rows):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        return folder

    one_epoch = {"finetune": [run("a", records((0, 0.5), (3, 0.6)))]}
    assert training_curves(one_epoch, "accuracy", None, True) == ({}, {})
    runs = {"finetune": [run("b", records((0, 0.5), (3, 0.6), (6, 0.8))), run("c", records((0, 0.5), (3, 0.7), (6, 0.7)))],
            "probe": [run("d", records((0, 0.5), (3, 0.55)))]}
    curve, summary = training_curves(runs, "accuracy", 0.7, True)
    assert list(curve) == ["finetune", "probe"] and [p["seeds"] for p in curve["finetune"]] == [2, 2, 2]
    assert curve["finetune"][2]["mean"] == pytest.approx(0.75)
    assert summary["finetune"]["reached"] == "2/2" and summary["probe"]["reached"] == "0/1"
