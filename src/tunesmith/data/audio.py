"""Audio files decoded to what speech models take: one channel of float32 samples at a given rate.

`read_audio` reads any format libsndfile knows (WAV, FLAC, OGG, ...) with soundfile, averages the
channels to mono and resamples with a polyphase filter (8 kHz recordings become Whisper's 16 kHz).
An unreadable or empty file is a `DataError` naming it. Rows of clips are read in the layouts images
use (`tunesmith.data.file_rows`: class folders, `train/` + `val/` folders, a table of paths), or
for speech a folder with a transcripts file (`tunesmith.data.transcripts`), and
`check_audio` opens every clip in the preflight, before any weights load: missing, empty, not
audio, silent or longer than the task's limit are named by path and skipped or refused as
`data.bad_rows` says. `AudioClips` decodes clips on access, so a large set never sits in memory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.data.file_rows import FileKind, check_files, read_file_rows
from tunesmith.data.labelled import LabelledRows
from tunesmith.data.readers import not_found
from tunesmith.data.transcripts import read_transcribed_folder, transcript_files
from tunesmith.errors import DataError

_INSTALL = "pip install 'tunesmith[audio]'"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")  # what libsndfile 1.1+ decodes


def audio_kind(section: str) -> FileKind:
    """Audio clips as the task `section` reads them (its `audio_column` and `audio_root` keys)."""
    return FileKind("audio file", "audio files", AUDIO_EXTENSIONS, section, "audio_column", "audio_root",
                    "yes/*.wav, no/*.wav")


def read_audio_rows(section: str, path: str | Path, audio_column: str, label_column: str | None,
                    audio_root: str | None, bad_rows: str, labelled: bool = True,
                    label_key: str = "data.label_column", transcripts: bool = False) -> LabelledRows:
    """Reads a folder of clips or a table of paths (labels are folder names or `label_column`, the
    config key `label_key`: a transcript column for speech recognition); with `transcripts`, a folder
    holding a transcripts file is read by it (`data.transcripts`).

    Raises:
        DataError: as `file_rows.read_file_rows` or `transcripts.read_transcribed_folder`.
    """
    files = transcript_files(Path(path)) if transcripts and labelled and Path(path).is_dir() else []
    if files:
        return read_transcribed_folder(Path(path), files, audio_column, AUDIO_EXTENSIONS, bad_rows)
    return read_file_rows(audio_kind(section), path, audio_column, label_column, audio_root, bad_rows, labelled,
                          label_key)


def audio_problem(path: str, max_seconds: float, limit_key: str) -> str | None:
    """Why `path` cannot be used as a clip (unreadable, empty, silent, longer than `max_seconds`), or None."""
    import soundfile

    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        info = soundfile.info(path)
        if info.frames == 0:
            return "holds no samples"
        if info.duration > max_seconds:
            return (f"{info.duration:.1f} s long, over the {max_seconds:g} s limit ({limit_key}); cut it into "
                    "shorter clips")
        samples, _ = soundfile.read(path, dtype="float32", always_2d=True)
    except FileNotFoundError:
        return "file not found"
    except (RuntimeError, ValueError, TypeError) as exc:  # soundfile's LibsndfileError is a RuntimeError
        detail = str(exc).rsplit("': ", 1)[-1]  # libsndfile's reason, without "Error opening '<path>'"
        return f"not audio, or a format libsndfile cannot read ({detail})"
    if not np.any(samples):
        return "silent (every sample is 0)"
    return None


def check_audio(section: str, rows: LabelledRows, key: str, bad_rows: str, max_seconds: float,
                limit_key: str) -> tuple[LabelledRows, list[dict[str, Any]]]:
    """Opens every clip of `rows`; drops the unusable ones (`skip`) or raises naming them (`error`).

    Raises:
        DataError: soundfile is not installed; under `bad_rows: error` a clip is unusable; no clip is usable.
    """
    try:
        import soundfile  # noqa: F401 - checked here once, before the worker threads need it
    except ImportError:
        raise DataError(f"reading audio needs the package soundfile; install it with: {_INSTALL}") from None
    return check_files(audio_kind(section), rows, key, bad_rows, lambda p: audio_problem(p, max_seconds, limit_key),
                       fix="fix, trim or remove them")


def audio_seconds(path: str) -> float:
    """A clip's length from its header, without decoding it (0 for a file soundfile cannot read)."""
    import soundfile

    try:
        return float(soundfile.info(path).duration)
    except (RuntimeError, ValueError, TypeError):
        return 0.0


class AudioClips:
    """Clips decoded on access as `{"audio": (samples,) float32 at `rate`, "labels": id}` (no labels
    when `labels` is None); the task's collate turns a batch of them into model inputs."""

    def __init__(self, paths: list[str], labels: list[Any] | None, rate: int):
        self.paths, self.labels, self.rate = paths, labels, rate

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"audio": read_audio(self.paths[index], self.rate)}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


def read_audio(path: str | Path, rate: int) -> np.ndarray:
    """The file's samples as mono float32 at `rate` Hz, shape (samples,).

    Raises:
        DataError: the file is missing, not audio, or holds no samples; soundfile is not installed.
    """
    try:
        import soundfile
    except ImportError:
        raise DataError(f"reading audio needs the package soundfile; install it with: {_INSTALL}") from None
    path = Path(path)
    if not path.is_file():
        raise DataError(not_found(path, "audio file"))
    try:
        samples, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (samples, channels)
    except (RuntimeError, ValueError) as exc:  # soundfile's LibsndfileError is a RuntimeError
        raise DataError(f"cannot read audio file {path}: {exc}") from None
    if samples.shape[0] == 0:
        raise DataError(f"audio file {path} holds no samples")
    return resample(samples.mean(axis=1), file_rate, rate)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Mono samples at `to_rate`, by polyphase filtering (exact ratio of the two rates), as float32."""
    if from_rate == to_rate:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    common = math.gcd(from_rate, to_rate)
    return resample_poly(samples, to_rate // common, from_rate // common).astype(np.float32)
