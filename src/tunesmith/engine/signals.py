"""Graceful stop on SIGTERM and Ctrl-C: finish the current step, checkpoint, exit resumable.

The first signal only sets a flag that the loop checks after each optimizer step. A second
Ctrl-C exits at once (the default handler is back), without touching existing checkpoints.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from tunesmith.engine.checkpoint import latest


class StopRequest:
    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    def agree(self, accelerator) -> None:
        """Under DDP, a signal seen by any process stops all of them at the same step."""
        if accelerator.num_processes == 1:
            return
        import torch

        seen = torch.tensor(self.signal or 0, device=accelerator.device)
        self.signal = int(accelerator.reduce(seen, "max")) or None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal or 0)

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""

    def message(self, step: int, path: Path, run_dir: Path) -> str:
        """What stopped the run and how to resume it; names the checkpoint `path` only if it is on disk."""
        newest = path if path.is_dir() else latest(run_dir / "checkpoints")
        saved = f"saved {path}" if newest == path else (
            f"the newest checkpoint is {newest}" if newest else "no checkpoint is on disk, so a resume starts from the "
            "beginning")
        return (f"{self.name} received: stopped after step {step}; {saved}. "
                f"Resume with: tunesmith train {run_dir / 'config.yaml'} --resume")


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # signals can only be handled in the main thread
        return

    def handle(signum, frame):
        request.signal = signum
        signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler)

    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
