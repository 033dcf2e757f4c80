"""What the tunesmith-against-Trainer scripts share: running each arm in its own subprocess, and
taking tunesmith's in-loop evaluations and saves out of its loop clock (Trainer's loop has none)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def run_arms(script: str, out_file: Path, arms: tuple[str, ...] = ("tunesmith", "trainer")) -> dict[str, dict]:
    """Runs `script --arm A` (plus this process's arguments) for each arm, one after the other; each
    prints its numbers as the last JSON line. Writes them all to `out_file` and returns them."""
    runs = {}
    for arm in arms:
        proc = subprocess.run([sys.executable, script, "--arm", arm, *sys.argv[1:]], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"the {arm} run failed:\n{proc.stderr[-3000:]}")
        runs[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{arm}: {runs[arm]}", file=sys.stderr)
    out_file.write_text(json.dumps(runs, indent=2) + "\n")
    return runs


def time_loop_extras() -> dict[str, list[float]]:
    """Wraps the loop's evaluate and save calls with timers (behaviour unchanged); pass the returned
    record to `in_loop_seconds` after the run."""
    import tunesmith.engine.loop as loop

    spent: dict[str, list[float]] = {"evaluate": [], "save": []}

    def timed(name, fn):
        def wrapped(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name].append(time.perf_counter() - start)
        return wrapped

    loop.evaluate = timed("evaluate", loop.evaluate)
    loop.save_best, loop.save_checkpoint = timed("save", loop.save_best), timed("save", loop.save_checkpoint)
    return spent


def in_loop_seconds(spent: dict[str, list[float]]) -> float:
    """Seconds of evaluations and saves inside the loop clock: every `loop.evaluate` but the last (the
    final record, after the clock). The baseline goes through `evaluation.baseline_scores`, which calls
    `evaluation.evaluate` itself, so it is not in `spent`."""
    return sum(spent["evaluate"][:-1]) + sum(spent["save"])
