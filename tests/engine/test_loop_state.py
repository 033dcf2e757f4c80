"""The loop state's judgements: which evaluation is the best, and how ties count against the patience."""

from __future__ import annotations

from tunesmith.engine.loop_state import LoopState, improved


def test_a_tie_with_a_lower_validation_loss_does_not_cut_patience_short():
    state = LoopState()
    assert improved({"step": 10, "accuracy": 0.75, "loss": 0.60}, state, "accuracy", True, 0.0)
    # Same accuracy (one row's step not crossed), lower loss: the model kept improving.
    assert improved({"step": 20, "accuracy": 0.75, "loss": 0.50}, state, "accuracy", True, 0.0)
    assert (state.best_step, state.best_loss, state.evals_without_improvement) == (20, 0.50, 0)
    # Same accuracy, higher loss: a stall, counted against the patience.
    assert not improved({"step": 30, "accuracy": 0.75, "loss": 0.55}, state, "accuracy", True, 0.0)
    assert (state.best_step, state.evals_without_improvement) == (20, 1)
    # A non-zero threshold is the user's minimum change: a gain below it is not a tie, whatever the loss.
    assert not improved({"step": 40, "accuracy": 0.755, "loss": 0.40}, state, "accuracy", True, 0.01)
    assert state.evals_without_improvement == 2
