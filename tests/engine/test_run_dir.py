"""The run directory: a run removes only what tunesmith runs wrote (the manifest), and its lock
is taken over by exactly one of several runs starting at once."""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

import tunesmith
from tunesmith.cli import app
from tunesmith.engine.run_dir import LOCK, MANIFEST, process_alive, read_manifest, run_lock

USER_FILES = ("README.md", "data.json", "report.html", "plots/loss.png", "mlruns/0/meta.yaml", "tensorboard/events")


def write_user_files(folder) -> None:
    for name in USER_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"the user's own {name}")


def assert_user_files_intact(folder) -> None:
    for name in USER_FILES:
        assert (folder / name).read_text() == f"the user's own {name}", name


def test_a_run_never_deletes_files_it_did_not_write_even_with_overwrite(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    write_user_files(run_dir)
    with pytest.raises(tunesmith.RunDirError, match="holds files that no tunesmith run wrote "
                       r"\(README.md, data.json, mlruns, plots, report.html, tensorboard\).*another"):
        tunesmith.finetune(tiny_config, ["overwrite_output_dir=true"], quiet=True)
    assert_user_files_intact(run_dir)


def test_quickstart_into_a_folder_with_the_users_config_refuses_and_keeps_it(tmp_path):
    (tmp_path / "config.yaml").write_text("my: own config\n")
    result = CliRunner().invoke(app, ["quickstart", "--output-dir", str(tmp_path), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "config.yaml" in result.output and "Traceback" not in result.output
    assert (tmp_path / "config.yaml").read_text() == "my: own config\n"


def test_overwrite_removes_only_what_the_run_wrote(tiny_config, tmp_path):
    tiny_config["training"].update(max_steps=2, save_steps=2)
    run_dir = tmp_path / "run"
    tunesmith.finetune(tiny_config, quiet=True)
    written = read_manifest(run_dir)
    assert {"config.yaml", "metrics.jsonl", "best", "checkpoints", "README.md", "report.html"} <= written
    assert written == {p.name for p in run_dir.iterdir()} - {MANIFEST}  # everything the run left, nothing else
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(tunesmith.RunDirError, match=r"no tunesmith run wrote \(notes.txt\)"):
        tunesmith.finetune(tiny_config, ["overwrite_output_dir=true"], quiet=True)
    (run_dir / "notes.txt").unlink()
    (run_dir / "lr_find").mkdir()  # `tunesmith lr-find` writes here: kept, not foreign
    (run_dir / "lr_find" / "lr_find.json").write_text("{}")
    (run_dir / "checkpoints" / "step-99").mkdir()  # inside a folder the run wrote: removed with it
    tunesmith.finetune(tiny_config, ["overwrite_output_dir=true"], quiet=True)
    assert (run_dir / "lr_find" / "lr_find.json").read_text() == "{}"
    assert not (run_dir / "checkpoints" / "step-99").exists()


def test_a_damaged_manifest_is_refused_not_guessed(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / MANIFEST).write_text("{not json")
    (run_dir / "README.md").write_text("mine")
    with pytest.raises(tunesmith.RunDirError, match=f"{MANIFEST} is damaged"):
        tunesmith.finetune(tiny_config, ["overwrite_output_dir=true"], quiet=True)
    assert (run_dir / "README.md").read_text() == "mine"


def _contend(run_dir, start, hold_s, results) -> None:
    start.wait()
    try:
        with run_lock(run_dir):
            results.put("won")
            time.sleep(hold_s)  # hold it while the others try
    except tunesmith.RunDirError:
        results.put("refused")
    except Exception as exc:  # noqa: BLE001 - any other outcome is a failure the parent reports
        results.put(f"crashed: {exc!r}")


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_exactly_one_of_several_runs_takes_over_a_dead_runs_lock(tmp_path, kind):
    """Before the flock, 2 of 8 runs held the lock in about one round of ten (processes), and
    every thread of one process took it over (its pid looked like its own)."""
    ctx = multiprocessing.get_context("fork")
    contenders = 8
    for round_ in range(12):
        dead = subprocess.Popen(["true"])
        dead.wait()  # its pid names no process now
        (tmp_path / LOCK).write_text(str(dead.pid))
        if kind == "process":
            start, results = ctx.Barrier(contenders), ctx.Queue()
            workers = [ctx.Process(target=_contend, args=(tmp_path, start, 0.3, results)) for _ in range(contenders)]
        else:
            start, results = threading.Barrier(contenders), queue.Queue()
            workers = [threading.Thread(target=_contend, args=(tmp_path, start, 0.3, results)) for _ in range(contenders)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
        outcomes = sorted(results.get(timeout=5) for _ in range(contenders))
        assert outcomes == ["refused"] * (contenders - 1) + ["won"], f"round {round_}: {outcomes}"
        assert not (tmp_path / LOCK).exists()  # the winner removed it when done


def test_the_manifest_lists_what_an_interrupted_run_wrote(tiny_config, tmp_path):
    """Written as files appear (on every record), so even a run that ends in an error leaves it."""
    tiny_config["training"].update(max_steps=3, logging_steps=1)

    def fail_at_step_2(record):
        if record["phase"] == "train" and record["step"] == 2:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        tunesmith.finetune(tiny_config, quiet=True, on_record=fail_at_step_2)
    manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert {"config.yaml", "metrics.jsonl"} <= set(manifest["entries"])


def test_a_killed_runs_lock_is_free_while_its_forked_workers_live_on(tmp_path):
    """Data-loader workers are forked while the lock is held; they must not keep it after a kill -9."""
    code = (
        "import multiprocessing, os, sys, time, pathlib\n"
        "from tunesmith.engine.run_dir import run_lock\n"
        f"with run_lock(pathlib.Path({str(tmp_path)!r})):\n"
        "    worker = multiprocessing.get_context('fork').Process(target=time.sleep, args=(30,))\n"
        "    worker.start()\n"
        "    print(worker.pid, flush=True)\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    worker = int(run.stdout.readline())  # not until EOF: the worker keeps the pipe open
    run.wait(timeout=60)
    try:
        assert process_alive(worker)
        with run_lock(tmp_path):
            pass
    finally:
        os.kill(worker, 9)
        run.stdout.close()
