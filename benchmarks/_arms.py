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
        out_file.write_text(json.dumps(runs, indent=2) + "\n")  # after each arm: a later failure keeps it
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


def cpu_probe() -> dict[str, float]:
    """Now: wall clock, this process's CPU seconds, and the busy CPU seconds of the cores it may run on."""
    import os

    cores = {f"cpu{c}" for c in os.sched_getaffinity(0)}
    busy = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *ticks = line.split()
            if name in cores:  # user nice system idle iowait irq softirq steal
                t = [int(x) for x in ticks[:8]]
                busy += sum(t) - t[3] - t[4]
    times = os.times()
    return {"wall": time.perf_counter(), "cpu": times.user + times.system,
            "cores_busy": busy / os.sysconf("SC_CLK_TCK"), "cores": len(cores)}


def load_between(begin: dict[str, float], end: dict[str, float]) -> dict[str, float]:
    """The load between two `cpu_probe`s: this process's use of its cores, and the share other processes took."""
    wall, cpu = end["wall"] - begin["wall"], end["cpu"] - begin["cpu"]
    others = (end["cores_busy"] - begin["cores_busy"] - cpu) / (wall * begin["cores"])
    return {"loop_cpu_utilization": round(cpu / (wall * begin["cores"]), 3),
            "other_processes_share_of_its_cores": round(max(0.0, others), 3)}
