"""A folder of clips with a transcripts file: the layouts speech corpora ship in.

Two line formats are read, each line naming a clip by its file name without the extension (its
stem), which is looked up anywhere under the folder:

- `ID words ...`: LibriSpeech's `*.trans.txt` (one per chapter folder), Kaldi's `text`, or a
  `transcripts.txt` written by hand;
- `words ... (ID)`: CMU Sphinx's `*.transcription` (as in Debian's pocketsphinx-testdata), with the
  `<s>` and `</s>` sentence marks dropped.

A line whose clip is not in the folder is a bad row (named by file and line, skipped or an error as
`data.bad_rows` says); clips without a line are left out, with a note. The rows keep a `speaker`
column where the folder layout gives one (LibriSpeech: `speaker/chapter/speaker-chapter-utt.flac`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from tunesmith.data.labelled import LabelledRows
from tunesmith.errors import DataError

log = logging.getLogger("tunesmith")

PATTERNS = ("*.trans.txt", "*.transcription", "transcription", "transcripts.txt", "text")
_SPHINX = re.compile(r"(?P<words>.*)\((?P<id>[^()\s]+)\)\s*")


def transcript_files(folder: Path) -> list[Path]:
    """Every transcripts file under `folder` (searched recursively), in path order."""
    found = {p for pattern in PATTERNS for p in folder.rglob(pattern) if p.is_file() and not p.name.startswith(".")}
    return sorted(found)


def parse_line(line: str) -> tuple[str, str] | None:
    """(clip id, transcript) of one line in either format; None for a blank line."""
    line = line.strip()
    if not line:
        return None
    sphinx = _SPHINX.fullmatch(line)
    if sphinx:
        return sphinx["id"], " ".join(w for w in sphinx["words"].split() if w not in ("<s>", "</s>"))
    clip, _, words = line.partition(" ")
    return clip, " ".join(words.split())


def read_transcribed_folder(folder: Path, files: list[Path], key: str, extensions: tuple[str, ...],
                            bad_rows: str) -> LabelledRows:
    """Rows of (clip path, transcript) from the transcripts `files` under `folder`.

    Raises:
        DataError: a line names a clip that is not there or has no words (under `bad_rows: error`),
            or no line names a clip that is.
    """
    clips = {p.stem: p for p in sorted(folder.rglob("*")) if p.suffix.lower() in extensions and p.is_file()}
    paths, texts, speakers, problems = [], [], [], []
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            parsed = parse_line(line)
            if parsed is None:
                continue
            clip, text = parsed
            if clip not in clips or not text:
                problems.append(f"{file}:{number} ({'no words' if clip in clips else f'no clip named {clip}'})")
                continue
            paths.append(str(clips[clip].resolve()))
            texts.append(text)
            speakers.append(_speaker(clips[clip], folder))
    _report(folder, problems, bad_rows, len(paths))
    unused = len(clips) - len(set(paths))
    if unused:
        log.info("%s: %d clips have no line in %s and are left out", folder, unused, ", ".join(p.name for p in files[:3]))
    columns = {key: paths, "transcript": texts} | ({"speaker": speakers} if any(speakers) else {})
    return LabelledRows(str(folder), {key: paths}, texts, list(range(1, len(paths) + 1)), skipped=len(problems),
                        columns=columns)


def _speaker(clip: Path, folder: Path) -> str:
    """LibriSpeech's speaker: the top folder of `speaker/chapter/clip`; empty for other layouts."""
    parts = clip.relative_to(folder).parts
    return parts[0] if len(parts) == 3 and parts[0].isdigit() else ""


def _report(folder: Path, problems: list[str], bad_rows: str, usable: int) -> None:
    if not problems:
        return
    what = f"{len(problems)} transcript lines cannot be used: {'; '.join(problems[:5])}"
    if bad_rows == "error" or not usable:
        fix = "fix the lines or the file names" + ("" if not usable else ", or set data.bad_rows: skip")
        raise DataError(f"{folder}: {what}; {fix}")
    log.warning("%s: skipping %s", folder, what)
