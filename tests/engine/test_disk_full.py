"""A real full disk: a small tmpfs under the run, filled at the moment a given writer starts, so each
writer raises what it really raises (safetensors `SafetensorError`, `torch.save` `RuntimeError`, a plain
append `OSError`). Each ends the run with one `RunDirError` line, and the last good checkpoint verifies."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import tunesmith
from tunesmith.engine import checkpoint as checkpoint_module
from tunesmith.engine.checkpoint import checkpoints, verify


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs at tmp_path/disk (the tiny BERT's run needs about 25), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small filesystem")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield disk
    if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk: Path) -> None:
    """Writes a filler file until the filesystem has no free block left."""
    chunk = b"\0" * (1 << 16)
    f = (disk / "filler").open("wb", buffering=0)
    try:
        while True:
            f.write(chunk)
    except OSError:
        small = b"\0" * 512
        try:
            while True:
                f.write(small)
        except OSError:
            pass
    finally:
        f.close()


def fill_on_call(module, name: str, disk: Path, call: int, before: bool) -> None:
    """Wraps `module.name` so that its `call`-th call fills the disk before (or after) running."""
    real = getattr(module, name)
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        if before and count["n"] == call:
            fill(disk)
        out = real(*args, **kwargs)
        if not before and count["n"] == call:
            fill(disk)
        return out

    return wrapped


def config_on(disk: Path, tiny_config: dict, **training) -> dict:
    tiny_config["output_dir"] = str(disk / "run")
    tiny_config["training"].update(save_total_limit=5, **training)
    return tiny_config


def assert_one_line_and_intact(err, run: Path, last: str) -> None:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    assert err.value.exit_code == 2
    assert checkpoints(run / "checkpoints")[0].name == last
    verify(run / "checkpoints" / last)


def test_full_disk_at_the_best_model_save(small_disk, tiny_config, monkeypatch):
    import transformers.modeling_utils as modeling_utils

    config = config_on(small_disk, tiny_config, save_steps=2, eval_strategy="steps", eval_steps=4, max_steps=4)
    # transformers writes config.json, then the weights through safetensors: the disk fills in between.
    monkeypatch.setattr(modeling_utils, "safe_save_file", fill_on_call(modeling_utils, "safe_save_file", small_disk, 1, True))
    with pytest.raises(tunesmith.RunDirError, match=r"disk full while writing \S*/best; best was left as it was "
                       "before; last good checkpoint: step-2") as err:
        tunesmith.finetune(config, quiet=True)
    assert_one_line_and_intact(err, small_disk / "run", "step-2")
    assert not (small_disk / "run" / "best").exists()


def test_full_disk_at_a_checkpoint_write(small_disk, tiny_config, monkeypatch):
    config = config_on(small_disk, tiny_config, save_steps=2, max_steps=4, eval_strategy="steps", eval_steps=100)
    # The weights of the second checkpoint are written, then the disk is full for torch.save's optimizer file.
    monkeypatch.setattr(checkpoint_module, "save_file", fill_on_call(checkpoint_module, "save_file", small_disk, 2, False))
    with pytest.raises(tunesmith.RunDirError, match=r"disk full while writing \S*step-4; step-4 was left as it was "
                       "before; last good checkpoint: step-2") as err:
        tunesmith.finetune(config, quiet=True)
    assert_one_line_and_intact(err, small_disk / "run", "step-2")
    assert [p.name for p in (small_disk / "run" / "checkpoints").iterdir()] == ["step-2"]  # no partial folder


def test_full_disk_at_a_metrics_append(small_disk, tiny_config):
    config = config_on(small_disk, tiny_config, save_steps=3, max_steps=90, num_train_epochs=30, eval_strategy="steps",
                       eval_steps=1000, logging_steps=1)
    metrics = small_disk / "run" / "metrics.jsonl"
    sizes = [0]

    def fill_before_a_page_boundary(record):
        # tmpfs appends into the file's last page without a new block, so the disk is filled when the
        # next record likely crosses into a new page, and only where no checkpoint comes first (the
        # next step's checkpoint, every third step, is written before its record). A record that still
        # fitted (it was shorter) frees the disk again, to try at the next page.
        (small_disk / "filler").unlink(missing_ok=True)
        size = metrics.stat().st_size
        length, sizes[0] = size - sizes[0], size
        if record["phase"] == "train" and (record["step"] + 1) % 3 != 0 and 4096 - size % 4096 < length:
            fill(small_disk)

    with pytest.raises(tunesmith.RunDirError, match=r"disk full while appending the train record of step (\d+) to "
                       r"\S*metrics.jsonl; the file was cut back") as err:
        tunesmith.finetune(config, quiet=True, on_record=fill_before_a_page_boundary)
    run = small_disk / "run"
    assert_one_line_and_intact(err, run, checkpoints(run / "checkpoints")[0].name)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line whole
    failed = int(str(err.value).split("record of step ")[1].split()[0])
    assert records[-1]["step"] == failed - 1
