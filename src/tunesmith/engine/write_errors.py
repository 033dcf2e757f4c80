"""Which exceptions from the writers of a run (safetensors, torch.save, plain files) mean the disk failed.

On a full disk the writers do not all raise `OSError(ENOSPC)`: safetensors raises `SafetensorError`
("I/O error: No space left on device (os error 28)") and `torch.save` a `RuntimeError` about the
zip writer's position ("unexpected pos 576 vs 534", or "basic_ios::clear: iostream error") that says nothing of the disk. `write_failure`
turns each into one reason ("disk full", or the I/O error), so every writer ends the run the same
way: one line, exit 2, earlier files untouched. Other exceptions (a bug, an object that cannot be
pickled) are not write failures and keep their traceback.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

# Below this many free bytes a failed write is taken to be a full disk: a sequential writer stops
# within one block of the end.
FULL_BELOW = 1 << 20
DISK_FULL_TEXT = ("no space left on device", "os error 28", "storagefull", "disk quota exceeded", "os error 122")
IO_TEXT = ("i/o error", "ioerror", "iostream error", "file write failed", "unexpected pos", "pytorchstreamwriter failed")


def write_failure(exc: BaseException, where: Path) -> str | None:
    """The reason a write into `where` failed, or None when `exc` is not a write failure."""
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) or _nearly_full(where):
            return "disk full"
        return exc.strerror or str(exc)
    if type(exc).__name__ != "SafetensorError" and not isinstance(exc, RuntimeError):
        return None
    text = str(exc).lower()
    if any(marker in text for marker in DISK_FULL_TEXT):
        return "disk full"
    if any(marker in text for marker in IO_TEXT):
        return "disk full" if _nearly_full(where) else f"write failed ({str(exc).splitlines()[0][:200]})"
    return None


def _nearly_full(where: Path) -> bool:
    for folder in (where, *where.parents):
        try:
            stats = os.statvfs(folder)
        except OSError:
            continue
        return stats.f_bavail * stats.f_frsize < FULL_BELOW
    return False
