"""Audio files decoded to what speech models take: one channel of float32 samples at a given rate.

`read_audio` reads any format libsndfile knows (WAV, FLAC, OGG, ...) with soundfile, averages the
channels to mono and resamples with a polyphase filter (8 kHz recordings become Whisper's 16 kHz).
An unreadable or empty file is a `DataError` naming it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tunesmith.data.readers import not_found
from tunesmith.errors import DataError

_INSTALL = "pip install 'tunesmith[audio]'"


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
