"""SpecAugment of training clips: bands and spans inside each clip, seeded, refused where it cannot hold."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from tunesmith.tasks._audio import AudioSettings, set_model_spec_augment, spec_augmented


def masked_cells(features: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return (out == 0) & (features != 0)


def test_light_masks_one_band_and_one_span_inside_each_clips_own_frames():
    torch.manual_seed(0)
    features = torch.rand(64, 80, 200) + 0.5  # no zeros of its own
    frames = torch.randint(20, 201, (64,))
    features[torch.arange(200)[None, None, :].expand(64, 80, -1) >= frames[:, None, None]] = 0.0  # the padding
    out = spec_augmented(features, frames, "light")
    hit = masked_cells(features, out)
    for clip in range(64):
        rows = hit[clip, :, : frames[clip]].all(dim=1).nonzero().flatten()  # whole bands: every frame of a bin
        cols = hit[clip, :, : frames[clip]].all(dim=0).nonzero().flatten()  # whole spans within the clip
        assert len(rows) < 15 and len(cols) <= max(1, int(frames[clip] * 0.1))
        for found in (rows, cols):
            if len(found):
                assert found.max() - found.min() + 1 == len(found)  # one contiguous band / span
        band, span = torch.zeros(80, dtype=torch.bool), torch.zeros(200, dtype=torch.bool)
        band[rows], span[cols] = True, True
        assert torch.equal(hit[clip], (band[:, None] | span[None, :]) & (features[clip] != 0))  # nothing else
    assert hit.any(dim=(1, 2)).float().mean() > 0.8  # most clips lose something (a width can draw 0)


def test_masks_repeat_under_the_same_seed_and_none_changes_nothing():
    features, frames = torch.rand(4, 80, 100) + 0.5, torch.tensor([100, 60, 30, 10])
    torch.manual_seed(7)
    first = spec_augmented(features, frames, "strong")
    torch.manual_seed(7)
    assert torch.equal(first, spec_augmented(features, frames, "strong")) and not torch.equal(first, features)
    assert spec_augmented(features, frames, "none") is features and spec_augmented(features, frames, None) is features


def test_strong_masks_more_than_light():
    torch.manual_seed(0)
    features, frames = torch.rand(256, 80, 100) + 0.5, torch.full((256,), 100)
    light = masked_cells(features, spec_augmented(features, frames, "light")).float().mean()
    strong = masked_cells(features, spec_augmented(features, frames, "strong")).float().mean()
    assert 0.05 < light < strong < 0.5, (light, strong)


def test_masks_need_cropped_input_and_the_error_says_what_to_set():
    with pytest.raises(ValidationError, match="whisper_input: crop"):
        AudioSettings(spec_augment="light", whisper_input="pad")
    assert AudioSettings(spec_augment="none", whisper_input="pad").spec_augment == "none"


def test_a_wav2vec2_config_gets_the_presets_own_masking_and_unset_leaves_it():
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    model = Wav2Vec2Model(Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                         conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
                                         num_conv_pos_embeddings=4))
    set_model_spec_augment(model, None)
    assert (model.config.mask_time_prob, model.config.mask_feature_prob) == (0.05, 0.0)  # transformers' defaults
    set_model_spec_augment(model, "strong")
    assert (model.config.mask_time_prob, model.config.mask_feature_prob, model.config.apply_spec_augment) == (0.1, 0.05, True)
    set_model_spec_augment(model, "none")
    assert not model.config.apply_spec_augment
