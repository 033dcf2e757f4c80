"""Synthetic clips the speech tests share: a tone per word, listed in a CSV beside them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

WORDS = {"yes": 400.0, "no": 900.0, "stop": 1500.0}


def write_clips(folder: Path, words: dict[str, float] = WORDS, per_word: int = 4, rate: int = 16_000,
                seed: int = 0) -> Path:
    """A CSV of tones named by a word (`path,transcript,speaker`), 0.3-0.8 s each, beside the clips."""
    import soundfile

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for word, hertz in words.items():
        for i in range(per_word):
            t = np.arange(int(rate * rng.uniform(0.3, 0.8))) / rate
            soundfile.write(folder / f"{word}{i}.wav", 0.3 * np.sin(2 * np.pi * hertz * t), rate, subtype="PCM_16")
            rows.append({"path": f"{word}{i}.wav", "transcript": word.capitalize() + ".", "speaker": f"s{i % 2}"})
    with (folder / "clips.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "transcript", "speaker"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "clips.csv"
