"""The table of `tunesmith update`: each arm on the new and the old period, against the stale parent.

Forward gain is an arm's change on the new period's validation rows, backward transfer its change on
the old period's (negative: it forgot), both against the stale parent and signed so that positive is
better whichever way the metric runs. The same rows go to the terminal, the log and `summary.md`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunesmith.comparison.update import UpdateArm, UpdateResult

TITLES = {"stale": "stale (parent, not updated)", "update": "update", "replay": "update + replay",
          "l2sp": "update + L2-SP", "wise": "update + WiSE-FT", "retrain": "retrained on all rows",
          "scratch": "from scratch on the new rows"}


def table_rows(result: UpdateResult) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the update table."""
    m, stale = result.metric, result.row("stale")
    headers = ["arm", f"new period {m}", f"old period {m}", "forward gain", "backward transfer", "train s", "note"]
    rows = []
    for arm in result.arms:
        new, old = arm.new.get(m), (arm.old or {}).get(m)
        rows.append([TITLES.get(arm.arm, arm.arm), _cell(new), _cell(old),
                     _change(new, stale.new.get(m), result.greater_is_better, arm),
                     _change(old, (stale.old or {}).get(m), result.greater_is_better, arm),
                     "" if arm.train_seconds is None else f"{arm.train_seconds:.1f}", arm.note or ""])
    return headers, rows


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _change(value: float | None, stale: float | None, greater: bool, arm: UpdateArm) -> str:
    if value is None or stale is None or arm.arm == "stale":
        return ""
    return f"{(value - stale) * (1 if greater else -1):+.4f}"


def table_markdown(result: UpdateResult) -> str:
    headers, rows = table_rows(result)
    lines = [f"| {' | '.join(headers)} |", f"|{'---|' * len(headers)}"] + [f"| {' | '.join(r)} |" for r in rows]
    notes = "".join(f"\n- {n}" for n in result.notes)
    return (f"# Update of {result.lineage['parent']}\n\n{result.metric} on each period's validation rows; gains are "
            f"against the stale parent, positive is better.\n\n" + "\n".join(lines) + "\n" + (f"\nNotes:{notes}\n" if notes else ""))
