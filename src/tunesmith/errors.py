"""The exceptions tunesmith raises for problems a user can fix.

Every error here carries a message that names the offending file, row or key and says what to do.
The CLI prints the message on one line (or one short paragraph) and exits with code 2, with no
traceback; Python callers catch `TunesmithError`.
"""

from __future__ import annotations


class TunesmithError(Exception):
    """Base class for errors caused by input a user can fix (config, data, model source)."""

    exit_code = 2


class ConfigError(TunesmithError):
    """The run config is invalid. Holds every problem found, so all are reported at once."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        if len(problems) == 1:
            message = f"invalid config{where}: {problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in problems)
            message = f"invalid config{where} ({len(problems)} problems):\n{lines}"
        super().__init__(message)


class DataError(TunesmithError):
    """A data file is missing, unreadable, empty, or has bad rows or labels."""


class ModelSourceError(TunesmithError):
    """A model source cannot be resolved or loaded (not a model, not found, unsafe)."""


class RunDirError(TunesmithError):
    """The run directory cannot be used (not writable, or holds something unexpected)."""


class CheckpointError(TunesmithError):
    """A checkpoint is missing, incomplete or corrupted."""


class TrainingInterrupted(TunesmithError):
    """SIGTERM or Ctrl-C stopped training after a checkpoint was saved; the run can be resumed."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class NonFiniteLossError(TunesmithError):
    """The loss or gradients became NaN or infinite and the policy says stop."""


class ExportError(TunesmithError):
    """A model cannot be exported, or the exported model's outputs differ from PyTorch's."""


class LaunchError(TunesmithError):
    """The launch environment asks for what this machine cannot run (FSDP or DeepSpeed without a GPU), or
    sets a tunesmith variable to a value it does not take."""


class GPUMemoryError(TunesmithError):
    """Even a micro-batch of one example does not fit in GPU memory (`training.auto_find_batch_size`)."""
