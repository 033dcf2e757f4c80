"""Pieces the audio tasks (audio-classification, speech-recognition) share: their common settings,
the model source, the clip checks, and Whisper's encoder run over the batch's own length.

Whisper's encoder, as transformers runs it, takes exactly 30 s of log-mel frames (3,000), so a 0.5 s
clip would cost the encoder sixty times its length. Under `whisper_input: crop` (the default) the
encoder runs over the batch's longest clip instead: `whisper_states` calls the encoder's own modules
in their order (convolutions, the first T position embeddings, the blocks, the final norm) with the
padding zeroed before the strided convolution and masked out of attention, and returns which
positions are each clip's own, so a clip's states are those it would have alone, whatever else is in
its batch. `whisper_input: pad` feeds transformers' own forward 30 s per clip, exactly as its
`pipeline` does. A CTranslate2 Whisper (`demo:whisper-tiny-en`) is converted once into a cached
transformers folder (`models/converted.py`), so every source loads through the one `HFModel` path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from tunesmith.config import ModelConfig, Section
from tunesmith.data.audio import check_audio
from tunesmith.data.labelled import LabelledRows
from tunesmith.errors import ConfigError
from tunesmith.models.converted import is_ctranslate2_whisper, transformers_whisper
from tunesmith.models.hf_family import HFModel, TokenizerLoader

WHISPER_SECONDS = 30.0  # the encoder's fixed window: 3,000 mel frames of 10 ms


class AudioSettings(Section):
    """The keys every audio task's section has (each task's section adds its own)."""

    audio_column: str = "audio"
    """Column holding the audio file path in a CSV/JSONL file."""
    audio_root: str | None = None
    """Folder that relative paths in `audio_column` start from (default: the file's own folder)."""
    max_seconds: float = Field(30.0, gt=0)
    """Longest clip; longer ones are bad rows (skipped or an error, as `data.bad_rows` says). Whisper
    reads at most 30 s."""
    whisper_input: Literal["crop", "pad"] = "crop"
    """Whisper: `crop` runs the encoder over the batch's longest clip with the padding masked out
    (a clip scores as it would alone; ~30x less compute on 1 s clips); `pad` pads every clip to 30 s as
    transformers' own forward and `pipeline` do (a model trained under `crop` runs in plain
    transformers with the lines its model card shows)."""
    spec_augment: Literal["none", "light", "strong"] | None = None
    """SpecAugment (Park et al., 2019; no time warping) of training clips. Whisper: `light` zeroes one
    band of up to 15 of its 80 mel bins and one span of up to 10% of the clip's frames, `strong` two
    bands of up to 27 bins and two spans; evaluation never masks. wav2vec2-style models mask their own
    feature-encoder outputs: `light` sets their config's `mask_time_prob` to 0.05, `strong` to 0.1
    with `mask_feature_prob` 0.05, `none` turns both off. Unset (the default): as the model's config
    has it (Whisper: none; wav2vec2: 5% of time steps)."""

    @model_validator(mode="after")
    def _masks_need_clip_lengths(self) -> AudioSettings:
        if self.spec_augment in ("light", "strong") and self.whisper_input == "pad":
            raise ValueError("spec_augment masks spans of each clip's own frames, which whisper_input: pad does "
                             "not keep; use whisper_input: crop (the default) or spec_augment: none")
        return self


class AudioModel:
    """A task's audio model source: its `HFModel` (for a CTranslate2 Whisper, made on first use,
    after the conversion), and whether it is a Whisper."""

    def __init__(self, auto_class: str, model: ModelConfig, loader: TokenizerLoader):
        self.auto_class, self.settings, self.loader = auto_class, model, loader
        self.converted = is_ctranslate2_whisper(model.source)
        self._hf = None if self.converted else HFModel(auto_class, model, loader)
        self._whisper: bool | None = True if self.converted else None

    @property
    def hf(self) -> HFModel:
        if self._hf is None:  # only build/load get here: the preflight never converts
            folder = transformers_whisper(self.settings.source)
            self._hf = HFModel(self.auto_class, self.settings.model_copy(update={"source": str(folder)}), self.loader)
        return self._hf

    @property
    def whisper(self) -> bool:
        """Whether the model is a Whisper (its source's config says so; read once)."""
        if self._whisper is None:
            self._whisper = getattr(self.hf.model_config(), "model_type", None) == "whisper"
        return self._whisper


@dataclass(frozen=True)
class SpecAugment:
    """A preset's masks: for Whisper's log-mel frames, and for a wav2vec2-style config."""

    bands: int  # frequency masks per clip
    band_share: float  # widest band, as a share of the mel bins (15 / 80)
    spans: int  # time masks per clip
    span_share: float  # widest span, as a share of the clip's own frames
    mask_time_prob: float  # wav2vec2-style configs
    mask_feature_prob: float


SPEC_AUGMENT = {"none": SpecAugment(0, 0.0, 0, 0.0, 0.0, 0.0), "light": SpecAugment(1, 15 / 80, 1, 0.1, 0.05, 0.0),
                "strong": SpecAugment(2, 27 / 80, 2, 0.1, 0.1, 0.05)}


def spec_augmented(features: torch.Tensor, frames: torch.Tensor, preset: str | None) -> torch.Tensor:
    """(B, mels, T) cropped log-mel frames with the preset's bands and spans of each clip set to zero
    (what the padding after a clip holds), drawn from torch's generator, so a seeded run repeats.

    Args:
        frames: (B,) each clip's own frame count; spans fall inside it.
    """
    masks = SPEC_AUGMENT[preset or "none"]
    if not (masks.bands or masks.spans):
        return features
    batch, mels, steps = features.shape
    keep = torch.ones_like(features, dtype=torch.bool)
    bins = torch.arange(mels, device=features.device)[None, :]  # (1, mels)
    times = torch.arange(steps, device=features.device)[None, :]  # (1, T)
    for count, size, axis, limit in ((masks.bands, torch.full((batch,), mels), bins, masks.band_share),
                                     (masks.spans, frames, times, masks.span_share)):
        for _ in range(count):
            width = (torch.rand(batch) * (size * limit).floor().clamp(min=1)).long()  # (B,) in [0, widest)
            start = (torch.rand(batch) * (size - width + 1)).long()  # (B,)
            hit = (axis >= start[:, None].to(axis.device)) & (axis < (start + width)[:, None].to(axis.device))
            keep &= ~hit[:, :, None] if axis is bins else ~hit[:, None, :]
    return features * keep.to(features.dtype)


def set_model_spec_augment(model: nn.Module, preset: str | None) -> None:
    """A wav2vec2-style model's own SpecAugment, set in its config as the preset says (unset: left as is)."""
    config = getattr(model, "config", None)
    if preset is None or config is None or not hasattr(config, "mask_time_prob"):
        return
    masks = SPEC_AUGMENT[preset]
    config.mask_time_prob, config.mask_feature_prob = masks.mask_time_prob, masks.mask_feature_prob
    config.apply_spec_augment = bool(masks.mask_time_prob or masks.mask_feature_prob)


def checked_clips(section: str, rows: LabelledRows, key: str, bad_rows: str, settings: AudioSettings,
                  whisper: bool) -> tuple[LabelledRows, list[dict[str, Any]]]:
    """`data.audio.check_audio` with the task's limit, or Whisper's 30 s where that is lower; first
    refuses cropped Whisper input under several processes (`refuse_crop_across_processes`).

    Raises:
        ConfigError: as `refuse_crop_across_processes`.
        DataError: as `check_audio`.
    """
    if whisper:
        refuse_crop_across_processes(section, settings)
    limit, why = settings.max_seconds, f"{section}.max_seconds"
    if whisper and limit > WHISPER_SECONDS:
        limit, why = WHISPER_SECONDS, "Whisper's encoder reads 30 s"
    return check_audio(section, rows, key, bad_rows, limit, why)


def refuse_crop_across_processes(section: str, settings: AudioSettings) -> None:
    """`whisper_input: crop` runs Whisper's encoder module by module, outside the model's own forward,
    which is where DDP and FSDP synchronise gradients and gather shards: under several processes
    the replicas would silently drift apart, so it is refused (`pad` runs the model's own forward).

    Raises:
        ConfigError: crop under a launch of more than one process.
    """
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if settings.whisper_input == "crop" and processes > 1:
        raise ConfigError([f"{section}.whisper_input: crop runs Whisper's encoder outside the model's forward, which "
                           f"DDP/FSDP cannot synchronise across these {processes} processes; set {section}.whisper_input: "
                           "pad (every clip padded to 30 s, as transformers runs it) or train in one process"])


def whisper_features(extractor: Any, clips: list[np.ndarray], rate: int, mode: str) -> dict[str, torch.Tensor]:
    """Log-mel inputs of a batch: (B, mels, 3000) under `pad`; under `crop` (B, mels, T), T the longest
    clip's frames, zero after each clip's end, with each clip's frame count, `frames` (B,)."""
    if mode == "pad":
        return {"input_features": extractor(clips, sampling_rate=rate, return_tensors="pt").input_features}
    # Each clip's frames are computed alone, from the clip and one STFT window of silence after it, so
    # its last frames hold what they hold when the clip is padded to 30 s (`padded_features`), and
    # then zero-padded: zeros are what the first convolution pads with itself.
    mels = [extractor(np.pad(c, (0, max(0, min(extractor.n_fft, extractor.n_samples - len(c))))), sampling_rate=rate,
                      padding="longest", return_tensors="np").input_features[0] for c in clips]  # each (mels, frames)
    frames = torch.tensor([m.shape[-1] for m in mels], dtype=torch.long)
    features = torch.zeros((len(mels), mels[0].shape[0], int(frames.max())), dtype=torch.float32)
    for i, m in enumerate(mels):
        features[i, :, : m.shape[-1]] = torch.from_numpy(m)
    return {"input_features": features, "frames": frames}


def padded_features(features: torch.Tensor, frames: torch.Tensor, extractor: Any) -> torch.Tensor:
    """(B, mels, 3000) cropped log-mel frames as the extractor pads them to 30 s: each clip's frames, then
    the value its normalisation gives silence, the clip's highest value less 2 (log10 power floored at
    8 below the clip's peak, then scaled by 1/4)."""
    real = torch.arange(features.shape[-1], device=features.device) < frames[:, None]  # (B, T)
    peak = features.masked_fill(~real[:, None, :], float("-inf")).amax(dim=(1, 2))  # (B,)
    out = (peak - 2.0)[:, None, None].expand(-1, features.shape[1], extractor.nb_max_frames).clone()
    out[:, :, : features.shape[-1]] = torch.where(real[:, None, :], features, out[:, :, : features.shape[-1]])
    return out


def whisper_states(encoder: nn.Module, features: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper's encoder over T frames, not 30 s: (B, T', D) states, T' = ceil(T / 2), and the (B, T')
    mask of each clip's own positions. transformers' `WhisperEncoder.forward` step by step, with the
    padding zeroed before the strided convolution and masked out of attention.

    Args:
        features: (B, mels, T) log-mel frames, zero after each clip's end.
        frames: (B,) each clip's frame count.
    """
    steps = features.shape[-1]
    real = torch.arange(steps, device=features.device) < frames[:, None]  # (B, T)
    hidden = F.gelu(encoder.conv1(features)) * real[:, None, :].to(features.dtype)  # type: ignore[operator]  # (B, D, T)
    hidden = F.gelu(encoder.conv2(hidden)).permute(0, 2, 1)  # type: ignore[operator]  # (B, T', D)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]  # type: ignore[union-attr, index]
    hidden = F.dropout(hidden, p=float(encoder.dropout), training=encoder.training)  # type: ignore[arg-type]
    keep = torch.arange(hidden.shape[1], device=hidden.device) < (frames[:, None] + 1) // 2  # (B, T')
    mask = blocked(keep, hidden.dtype)[:, :, None, :].expand(-1, 1, hidden.shape[1], -1)  # (B, 1, T', T')
    for layer in encoder.layers:  # type: ignore[union-attr]
        if encoder.training and encoder.layerdrop > 0 and torch.rand([]) < encoder.layerdrop:  # type: ignore[operator]
            continue  # LayerDrop, as transformers applies it
        hidden = layer(hidden, mask)
    return encoder.layer_norm(hidden), keep  # type: ignore[operator]


def blocked(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, S) additive attention mask from a (B, S) mask of the keys to keep: 0 there, the dtype's
    lowest value elsewhere (never a whole row: every clip keeps at least one position)."""
    zeros = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    return zeros.masked_fill(~keep, torch.finfo(dtype).min)[:, None, :]


def masked_mean(states: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, D) the mean of (B, T, D) states over the positions where the (B, T) `keep` is true."""
    weights = keep.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1)
