"""Weights in a foreign format, converted once into a `save_pretrained` folder in tunesmith's cache.

A CTranslate2 Whisper (`demo:whisper-tiny-en`, or a folder holding CTranslate2's `model.bin`) is
read by `models/ctranslate2.py` into `WhisperForConditionalGeneration` and its processor. Rather
than teach every loading path that reader, the audio tasks convert it once into an ordinary
transformers folder and load that like any local model: `AutoModelForAudioClassification` takes
the encoder from it (dropping the decoder), `AutoModelForSpeechSeq2Seq` takes it all, the
from-scratch baseline reads its config, and `AutoProcessor` its feature extractor and tokenizer.
Conversion takes seconds on each load (a 75 MB float16 file parsed and mapped); the cached folder
loads in a fraction of that and is shared by every later run.

The cache is `$TUNESMITH_CACHE`, else `$XDG_CACHE_HOME/tunesmith`, else `~/.cache/tunesmith`. Each
folder is keyed on the source file's path, size and modification time (and `VERSION`), so a changed
file is converted afresh; it is written under a temporary name and renamed into place, so concurrent runs
never read a half-written folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from tunesmith.errors import ModelSourceError

log = logging.getLogger("tunesmith")

MARKER = "tunesmith-converted.json"  # written last: a folder without it is incomplete
VERSION = 2  # of what a converted folder holds; part of its key, so a fix reaches cached folders


def cache_root() -> Path:
    """Where converted folders live: `$TUNESMITH_CACHE`, `$XDG_CACHE_HOME/tunesmith` or `~/.cache/tunesmith`."""
    if os.environ.get("TUNESMITH_CACHE"):
        return Path(os.environ["TUNESMITH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "tunesmith"


def is_ctranslate2_whisper(source: str) -> bool:
    """Whether `source` names a CTranslate2 Whisper: one of its `demo:` aliases, or a folder with `model.bin`
    (a file name transformers never writes)."""
    from tunesmith.models.ctranslate2 import DEMO_FOLDERS

    if source.startswith("demo:"):
        return source.removeprefix("demo:") in DEMO_FOLDERS
    return (Path(source).expanduser() / "model.bin").is_file()


def transformers_whisper(source: str) -> Path:
    """The `save_pretrained` folder (model, generation config, feature extractor, tokenizer) of a
    CTranslate2 Whisper, converted on first use.

    Raises:
        ModelSourceError: the source cannot be read (see `ctranslate2.load_whisper`), or the cache
            folder cannot be written.
    """
    from tunesmith.models.ctranslate2 import load_whisper, model_bin

    parts = model_bin(source)
    stamp = ":".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in parts)
    key = hashlib.sha256(f"{VERSION}:{stamp}".encode()).hexdigest()[:16]
    name = source.removeprefix("demo:") if source.startswith("demo:") else parts[0].parent.name
    target = cache_root() / "ctranslate2" / f"{name}-{key}"
    if (target / MARKER).is_file():
        return target
    log.info("%s: converting the CTranslate2 weights into a transformers folder, once: %s", source, target)
    model, processor = load_whisper(source)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    try:
        model.save_pretrained(partial)
        processor.save_pretrained(partial)
        (partial / MARKER).write_text(json.dumps({"source": source, "model.bin": [str(p.resolve()) for p in parts]}) + "\n")
        try:
            partial.rename(target)
        except OSError:  # another run renamed its copy into place first
            if not (target / MARKER).is_file():
                raise
    except OSError as exc:
        raise ModelSourceError(f"cannot write the converted {source} to {target} ({exc.strerror or exc}); set "
                               "TUNESMITH_CACHE to a writable folder") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
