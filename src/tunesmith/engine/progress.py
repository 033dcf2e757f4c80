"""Progress display: a rich progress bar with step, loss, learning rate and ETA, or plain log lines.

Quiet mode (for logs and CI) prints one line per evaluation and nothing per step. `RowProgress`
counts rows through a long `predict` or `evaluate`: a bar on a terminal, otherwise a log line at
every tenth of a run of at least `LOG_FROM_ROWS` rows (shorter runs stay quiet in logs).
"""

from __future__ import annotations

import logging
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

log = logging.getLogger("tunesmith")

LOG_FROM_ROWS = 10_000


class ProgressDisplay:
    def __init__(self, quiet: bool, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def start(self, total_steps: int) -> None:
        if self.quiet:
            return
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epoch {task.fields[epoch]}  loss {task.fields[loss]}  lr {task.fields[lr]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=total_steps, epoch="-", loss="-", lr="-")

    def update(self, step: int, epoch: float, loss: float | None = None, lr: float | None = None) -> None:
        if self._progress is None or self._task is None:
            return
        fields: dict[str, Any] = {"epoch": f"{epoch:.2f}"}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if lr is not None:
            fields["lr"] = f"{lr:.2e}"
        self._progress.update(self._task, completed=step, **fields)

    def note(self, message: str) -> None:
        """A line that stays above the bar (or a log line in quiet mode)."""
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            log.info(message)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class RowProgress:
    """Rows done out of `total` for inference, as a context manager whose `advance(rows)` counts."""

    def __init__(self, total: int, label: str, console: Console | None = None):
        self.total, self.label, self.done, self._logged = total, label, 0, 0
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None

    def __enter__(self) -> RowProgress:
        if self.console.is_terminal:
            self._progress = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("rows"), TimeElapsedColumn(), TextColumn("eta"),
                                      TimeRemainingColumn(), console=self.console, transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total)
        return self

    def advance(self, rows: int) -> None:
        self.done += rows
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done)
        elif self.total >= LOG_FROM_ROWS and self.done * 10 // self.total > self._logged:
            self._logged = self.done * 10 // self.total
            log.info("%s: %d of %d rows", self.label, min(self.done, self.total), self.total)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
