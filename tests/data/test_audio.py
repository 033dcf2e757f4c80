"""Audio files: mono float32 at the asked rate, and unreadable files named."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tunesmith.data.audio import read_audio
from tunesmith.errors import DataError

soundfile = pytest.importorskip("soundfile", reason="the audio extra is not installed: pip install 'tunesmith[audio]'")


def test_stereo_8khz_becomes_mono_16khz_keeping_the_pitch(tmp_path):
    seconds = np.arange(8_000) / 8_000
    tone = 0.5 * np.sin(2 * np.pi * 440 * seconds)  # 1 s of 440 Hz
    path = tmp_path / "tone.wav"
    soundfile.write(path, np.stack([tone, tone], axis=1), 8_000, subtype="PCM_16")
    samples = read_audio(path, 16_000)
    assert samples.dtype == np.float32 and samples.shape == (16_000,)
    assert np.argmax(np.abs(np.fft.rfft(samples))) == 440  # 1 Hz bins over 1 s
    assert abs(np.abs(samples).max() - 0.5) < 0.02


def test_the_rate_it_has_is_kept_as_is(tmp_path):
    path = tmp_path / "noise.flac"
    soundfile.write(path, np.linspace(-0.5, 0.5, 1_600), 16_000)
    assert read_audio(path, 16_000).shape == (1_600,)


@pytest.mark.parametrize(("content", "problem"), [(b"", "cannot read audio file"), (b"not audio at all", "cannot read audio file")])
def test_an_unreadable_file_is_a_data_error_naming_it(tmp_path, content, problem):
    path = tmp_path / "clip.wav"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"{problem} {re.escape(str(path))}"):
        read_audio(path, 16_000)


def test_a_missing_or_empty_file_is_a_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="audio file not found: .*absent.wav"):
        read_audio(tmp_path / "absent.wav", 16_000)
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(0), 16_000)
    with pytest.raises(DataError, match="holds no samples"):
        read_audio(silent, 16_000)
