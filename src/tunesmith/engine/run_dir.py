"""The run directory: checked before training, locked while a run uses it, and compared on resume.

A run owns only what it wrote: `.tunesmith-manifest.json` lists the top-level files and folders a
tunesmith run created in the folder. A fresh run (also with `overwrite_output_dir`) removes only
those, and refuses a folder that holds anything else, so a user's README.md, data or config
in `output_dir` is never deleted or overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tunesmith.config import RunConfig
from tunesmith.engine.checkpoint import TMP_PREFIX, remove_stale_temporaries
from tunesmith.errors import CheckpointError, RunDirError

log = logging.getLogger("tunesmith")

LOCK = ".lock"
MANIFEST = ".tunesmith-manifest.json"
# Never listed, never foreign: the run's own bookkeeping and its temporaries.
INTERNAL_PREFIXES = (LOCK, MANIFEST, TMP_PREFIX, ".write-test-")
# Written into output_dir by other tunesmith commands (lr-find, compare, tune; tune's trial.json in
# a trial's run dir; self-training's first stages); a run neither counts them as foreign nor removes them.
OTHER_COMMANDS = ("lr_find", "compare", "trials", "study.db", "trial.json", "self_train")
# Keys whose change makes a checkpoint meaningless for the new config.
FIXED_ON_RESUME = ("task", "model.source", "data.label_column", "data.text_column", "data.text_pair_column")
# Keys whose change moves the position in the data: the interrupted epoch restarts. So does a new
# effective batch (micro-batch x accumulation): the batch order depends on it alone (engine/batching.py).
BATCHING_KEYS = ("data.train", "data.max_train_samples", "training.seed")
EFFECTIVE_BATCH = ("training.per_device_train_batch_size", "training.gradient_accumulation_steps")


def prepare_run_dir(path: str | Path, overwrite: bool, resuming: bool = False) -> Path:
    """Creates the run directory and proves it is writable, before any heavy work.

    Raises:
        RunDirError: it holds files no tunesmith run wrote (and the run is not resuming), an
            earlier run (and neither `overwrite` nor resuming), or it cannot be written.
    """
    run_dir = Path(path)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"output_dir {run_dir} is a file; choose a directory path")
    if run_dir.is_dir() and not resuming:
        check_no_foreign(run_dir)
        earlier = sorted(name for name in read_manifest(run_dir) if (run_dir / name).exists())
        if earlier and not overwrite:
            raise RunDirError(
                f"output_dir {run_dir} already holds a run ({', '.join(earlier)}); choose another output_dir, "
                "set overwrite_output_dir: true (--overwrite), or continue it with resume: auto (--resume)"
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"cannot write to output_dir {run_dir}: {exc.strerror or exc}; choose a writable path") from None
    return run_dir


def _entries(run_dir: Path) -> set[str]:
    """Top-level names in the folder, less the run's bookkeeping and empty folders (they hold
    nothing to lose; one can be left by a crash before the manifest listed it)."""
    return {name for name in os.listdir(run_dir) if not name.startswith(INTERNAL_PREFIXES)
            and not (os.path.isdir(run_dir / name) and not os.listdir(run_dir / name))}


def read_manifest(run_dir: Path) -> set[str]:
    """The names a tunesmith run wrote in `run_dir` (empty when it has no manifest).

    Raises:
        RunDirError: the manifest is damaged.
    """
    path = run_dir / MANIFEST
    if not path.exists():
        return set()
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["entries"]
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise TypeError
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise RunDirError(f"{path} is damaged, so tunesmith cannot tell its files from yours; "
                          "choose another output_dir, or delete the folder yourself") from None
    return {e for e in entries if e and "/" not in e and e not in (".", "..")}


def check_no_foreign(run_dir: Path) -> None:
    """Raises RunDirError naming what in `run_dir` no tunesmith run wrote (a fresh run would overwrite it)."""
    foreign = sorted(_entries(run_dir) - read_manifest(run_dir) - set(OTHER_COMMANDS))
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else "")
        raise RunDirError(
            f"output_dir {run_dir} holds files that no tunesmith run wrote ({shown}); tunesmith never deletes or "
            "overwrites those: choose another (new or empty) output_dir, or move them out")


class RunManifest:
    """Keeps `.tunesmith-manifest.json` listing every top-level entry this run created.

    Entries present when the run starts (after clearing) are never claimed; whatever appears later
    was written by the run. `sync` is cheap (one directory listing) and writes only on change.
    """

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir, self.enabled = run_dir, enabled
        self.claimed = read_manifest(run_dir) if enabled else set()
        self.before = _entries(run_dir) if enabled else set()

    def clear_earlier_run(self) -> None:
        """Removes what earlier tunesmith runs wrote here, and nothing else.

        Raises:
            RunDirError: the folder holds something no tunesmith run wrote, or a listed entry cannot be removed.
        """
        if not self.enabled:
            return
        check_no_foreign(self.run_dir)
        for name in sorted(self.claimed):
            target = self.run_dir / name
            try:
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
            except OSError as exc:
                raise RunDirError(f"cannot remove {target} of the earlier run: {exc.strerror or exc}; "
                                  "remove it yourself or choose another output_dir") from None
        self.claimed = set()
        self._write()
        self.before = _entries(self.run_dir)

    def sync(self, *_: Any) -> None:
        """Claims the entries that appeared since the run started (also usable as a record callback)."""
        if not self.enabled:
            return
        new = _entries(self.run_dir) - self.before - self.claimed
        if new:
            self.claimed |= new
            self._write()

    def _write(self) -> None:
        path = self.run_dir / MANIFEST
        tmp = self.run_dir / f"{TMP_PREFIX}manifest-{os.getpid()}"
        tmp.write_text(json.dumps({"written_by": "tunesmith", "entries": sorted(self.claimed)}, indent=1),
                       encoding="utf-8")
        os.replace(tmp, path)


def clear_earlier_run(run_dir: Path) -> None:
    """Removes what earlier tunesmith runs wrote in `run_dir` (see `RunManifest.clear_earlier_run`)."""
    RunManifest(run_dir).clear_earlier_run()


@contextlib.contextmanager
def run_lock(run_dir: Path, enabled: bool = True) -> Iterator[RunManifest]:
    """Holds `run_dir/.lock` for the duration of a run; a second live run on the folder is refused.

    Yields the run's manifest, synced once more when the run ends (also on an error). The lock is
    an `flock` on the file, so the kernel releases it when its process dies: a lock left by a crash
    or kill -9 is taken over, by exactly one of several runs starting at once. Under DDP only the
    main process holds it (`enabled` is False for the others).

    Raises:
        RunDirError: another live run holds the folder.
    """
    if not enabled:
        yield RunManifest(run_dir, enabled=False)
        return
    lock = run_dir / LOCK
    fd = _take_lock(lock, run_dir)
    _HELD.add(fd)
    try:
        remove_stale_temporaries(run_dir)
        manifest = RunManifest(run_dir)
        try:
            yield manifest
        finally:
            _final_sync(manifest)
    finally:
        lock.unlink(missing_ok=True)  # before closing: a waiter never takes a lock file that is being removed
        _HELD.discard(fd)
        os.close(fd)


# Lock descriptors this process holds. A forked child (a data-loader worker) closes its copies at
# once: an flock belongs to the open file, so a worker outliving a killed run would keep its lock.
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


def _take_lock(lock: Path, run_dir: Path) -> int:
    """An open descriptor on `lock`, flock-ed by this process and holding its pid."""
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirError(f"cannot lock {lock}: {exc.strerror or exc}; choose another output_dir") from None
            raise _busy(run_dir, _lock_owner(lock)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed the file between our open and flock: take the new one
            os.close(fd)
            continue
        owner = _read_owner(fd)
        if owner is not None and owner != os.getpid() and process_alive(owner):
            os.close(fd)  # a live process wrote its pid without flock (an older tunesmith)
            raise _busy(run_dir, owner)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd


def _busy(run_dir: Path, owner: int | None) -> RunDirError:
    who = f"pid {owner}" if owner is not None else "another process"
    return RunDirError(f"another tunesmith run ({who}) is using {run_dir}; wait for it or use another output_dir")


def _final_sync(manifest: RunManifest) -> None:
    try:
        manifest.sync()
    except OSError as exc:  # a full disk must not hide the error that ended the run
        log.warning("could not update %s: %s", manifest.run_dir / MANIFEST, exc.strerror or exc)


def _read_owner(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _lock_owner(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def check_resume_config(run_dir: Path, config: RunConfig, checkpoint_labels: list[str], label_names: list[str]) -> bool:
    """Prints what changed since the checkpoint; returns True when the interrupted epoch must restart.

    Raises:
        CheckpointError: the change makes the checkpoint unusable (other labels, task or model).
    """
    saved_path = run_dir / "config.yaml"
    old = flatten(yaml.safe_load(saved_path.read_text(encoding="utf-8"))) if saved_path.exists() else {}
    new = flatten(config.model_dump(mode="json"))  # as config.yaml holds it: tuples as lists
    ignore = {"resume", "overwrite_output_dir", "output_dir"}
    changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if k not in ignore and old.get(k) != new.get(k)}
    if checkpoint_labels and checkpoint_labels != label_names:
        raise CheckpointError(
            f"the checkpoint in {run_dir} is for {len(checkpoint_labels)} classes ({', '.join(checkpoint_labels)}), "
            f"the data now gives {len(label_names)} ({', '.join(label_names)}); start a new run in another output_dir")
    fixed = [k for k in changed if k in FIXED_ON_RESUME]
    if fixed:
        raise CheckpointError(
            f"cannot resume {run_dir}: {', '.join(f'{k} changed from {changed[k][0]!r} to {changed[k][1]!r}' for k in fixed)}; "
            "start a new run in another output_dir")
    if changed:
        log.warning("resuming with a changed config (the new values apply from the checkpoint on): %s",
                    "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    restart = [k for k in changed if k in BATCHING_KEYS]
    if any(k in changed for k in EFFECTIVE_BATCH) and _effective_batch(old) != _effective_batch(new):
        restart.append("the effective batch (per_device_train_batch_size x gradient_accumulation_steps)")
    if restart:
        log.warning("%s changed, so the position inside the interrupted epoch no longer applies: that epoch restarts "
                    "from its first batch", ", ".join(restart))
    return bool(restart)


def _effective_batch(flat: dict[str, Any]) -> int | None:
    micro, accumulation = (flat.get(k) for k in EFFECTIVE_BATCH)
    return micro * accumulation if isinstance(micro, int) and isinstance(accumulation, int) else None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict as dotted keys (`training.learning_rate`)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def cleared_outputs(folder: Path, names: tuple[str, ...], overwrite: bool, holds: str, fix: str) -> Path:
    """`folder`, created, without the earlier outputs `names` (of a comparison, an update) when `overwrite`.

    Raises:
        RunDirError: `folder` holds some of them and `overwrite` is off; the message says it holds `holds`
            and ends with `fix`.
    """
    earlier = [name for name in names if (folder / name).exists()]
    if earlier and not overwrite:
        raise RunDirError(f"{folder} already holds {holds} ({', '.join(earlier)}); {fix}")
    for name in earlier:
        target = folder / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder
