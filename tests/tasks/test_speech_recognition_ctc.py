"""Speech recognition with CTC on a wav2vec2-style source: a vocabulary of the transcripts' characters,
greedy decoding, the frozen feature encoder, `best/` in plain transformers, and a short real run.

The source is a tiny wav2vec2 with random weights saved as `facebook/wav2vec2-base` is (the encoder
and its feature extractor, no CTC head, no tokenizer); the clips are synthetic tones named by words.
The real run trains it on spoken keywords (Speech Commands, from ../shared/data).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import tunesmith
from _clips import write_clips  # tests/tasks/_clips.py, beside this file
from tunesmith.config import load_config
from tunesmith.errors import ConfigError
from tunesmith.recipe import frozen_as_configured
from tunesmith.tasks import get_task
from tunesmith.tasks._ctc import greedy

soundfile = pytest.importorskip("soundfile", reason="the audio extra is not installed: pip install 'tunesmith[audio]'")


# Convolutions of stride 5 * 4 * 8: 100 frames a second (wav2vec2-base: 50), room for CTC on short tones;
# no LayerDrop, so one backward reaches every block.
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "conv_dim": (16, 16, 16), "conv_stride": (5, 4, 8), "conv_kernel": (10, 8, 8), "num_conv_pos_embeddings": 8,
        "num_conv_pos_embedding_groups": 2, "layerdrop": 0.0}


def tiny_wav2vec2_config(**extra):
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(**TINY, **extra)


def save_tiny_wav2vec2(folder: Path) -> Path:
    """A 2-layer, 32-wide wav2vec2 encoder with random weights and wav2vec2-base's feature extractor settings."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    Wav2Vec2Model(tiny_wav2vec2_config()).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_wav2vec2(tmp_path_factory) -> Path:
    return save_tiny_wav2vec2(tmp_path_factory.mktemp("tiny-wav2vec2"))


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> Path:
    return write_clips(tmp_path_factory.mktemp("ctc-clips"))


def task_for(source: Path, train: Path, validation: Path | None = None, strategy: dict | None = None, **section):
    data = {"train": str(train), "validation": str(validation)} if validation else {"train": str(train),
                                                                                    "validation_split": 0.25}
    config = load_config({"task": "speech-recognition", "model": {"source": str(source)}, "data": data,
                          "strategy": strategy or {},
                          "speech_recognition": {"audio_column": "path", "text_column": "transcript", **section}})
    task = get_task(config)
    task.preflight()
    return task


def test_the_vocabulary_is_the_training_transcripts_characters_and_is_saved_with_the_model(tiny_wav2vec2, clips,
                                                                                           tmp_path):
    from transformers import AutoModelForCTC, AutoProcessor

    other = write_clips(tmp_path / "dev", {"maybe": 600.0}, per_word=2)
    task = task_for(tiny_wav2vec2, clips, other)
    model = task.build_model()
    tokenizer = task.ctc.processor.tokenizer
    assert tokenizer.get_vocab() == {"[PAD]": 0, "[UNK]": 1, "|": 2, "e": 3, "n": 4, "o": 5, "p": 6, "s": 7, "t": 8,
                                     "y": 9}  # lower-cased, the full stops removed (`normalize: true`)
    assert model.lm_head.out_features == 10 and model.config.pad_token_id == 0 and model.config.vocab_size == 10
    assert model.config.ctc_loss_reduction == "mean"
    targets = task.dataset(task.eval_rows, train=False).labels
    assert targets[0] == [1, 1, 9, 1, 3]  # "maybe": m, a and b unknown
    assert task.describe()["ctc"] == {"vocabulary_size": 10, "unknown_characters": {"m": 2, "a": 2, "b": 2},
                                      "clips_too_short_for_transcript": 0}
    task.save(model, str(tmp_path / "best"))
    assert json.loads((tmp_path / "best" / "vocab.json").read_text()) == tokenizer.get_vocab()
    processor = AutoProcessor.from_pretrained(tmp_path / "best")
    assert type(processor).__name__ == "Wav2Vec2Processor" and processor.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert AutoModelForCTC.from_pretrained(tmp_path / "best").lm_head.out_features == 10


@pytest.mark.parametrize(("preset", "masks"), [(None, (0.05, 0.0)), ("strong", (0.1, 0.05)), ("none", (0.0, 0.0))])
def test_spec_augment_sets_the_models_own_masking(tiny_wav2vec2, clips, preset, masks):
    config = task_for(tiny_wav2vec2, clips, spec_augment=preset).build_model().config
    assert (config.mask_time_prob, config.mask_feature_prob) == masks


def test_greedy_decoding_collapses_repeats_then_drops_blanks_as_the_processor_does(tiny_wav2vec2, clips):
    task = task_for(tiny_wav2vec2, clips)
    task.build_model()
    frames = [7, 7, 0, 7, 2, 2, 4, 0, 5, 5]  # s s _ s | | n _ o o
    assert greedy(frames, 0) == [7, 7, 2, 4, 5]
    tokenizer = task.ctc.processor.tokenizer
    assert tokenizer.decode(greedy(frames, 0), group_tokens=False) == task.ctc.processor.batch_decode([frames])[0] == "ss no"


def test_the_feature_encoder_is_the_stem_and_frozen_by_default(tiny_wav2vec2, clips, caplog):
    with caplog.at_level(logging.INFO, "tunesmith"):
        task = task_for(tiny_wav2vec2, clips)
    assert task.config.strategy.freeze == 1 and "freeze" not in task.config.strategy.model_fields_set
    assert "freeze_feature_encoder" in caplog.text
    model = task.build_model()
    groups = frozen_as_configured(task, model, task.config)
    assert [g.name for g in groups] == ["stem", "block.0", "block.1", "head"]
    stem = {n for n, _ in groups[0].params}
    assert any(".feature_extractor." in n for n in stem) and any(".feature_projection." in n for n in stem)
    assert all(not p.requires_grad for _, p in groups[0].params)
    assert all(p.requires_grad for g in groups[1:] for _, p in g.params)
    assert not model.wav2vec2.feature_extractor._requires_grad  # no backward into the frozen convolutions
    data = task.dataset(task.train_rows, train=True)
    loss, _ = task.loss(model, task.collate([data[i] for i in range(4)]))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    shown = tunesmith.run.inspect(task.config.model_dump(exclude_unset=True) | {"task": "speech-recognition"})
    assert [(g["group"], g["trains_in_epoch"][0]) for g in shown] == [("stem", False), ("block.0", True),
                                                                     ("block.1", True), ("head", True)]
    trained = task_for(tiny_wav2vec2, clips, strategy={"freeze": "none"})
    assert trained.config.strategy.freeze == "none"
    groups = frozen_as_configured(trained, trained.build_model(), trained.config)
    assert all(p.requires_grad for _, p in groups[0].params)


def test_eval_outputs_are_one_per_clip_and_save_then_load_gives_them_back(tiny_wav2vec2, clips, tmp_path):
    task = task_for(tiny_wav2vec2, clips)
    model = task.build_model().eval()
    data = task.dataset(task.eval_rows, train=False)
    with torch.no_grad():
        alone = task.batch_outputs(task.loss(model, batch := task.collate([data[0]]))[1], batch)
        together = task.batch_outputs(task.loss(model, batch := task.collate([data[i] for i in range(len(data))]))[1],
                                      batch)
    assert len(together) == len(data) and together[0].tokens == alone[0].tokens == len(data.labels[0])
    assert np.isfinite([o.loss_sum for o in together]).all() and all(o.text is not None for o in together)
    scores = task.metrics(task.eval_rows, together)
    assert {"wer", "cer", "empty_predictions", "loss"} <= set(scores) and np.isfinite(scores["loss"])
    task.save(model, str(tmp_path / "saved"))
    again = get_task(load_config({**task.config.model_dump(), "model": {"source": str(tmp_path / "saved")}}))
    reloaded = again.load_trained().eval()
    with torch.no_grad():
        after = again.batch_outputs(again.loss(reloaded, batch := again.collate([data[0]]))[1], batch)
    assert after[0].text == alone[0].text and after[0].loss_sum == pytest.approx(alone[0].loss_sum, rel=1e-5)


def test_the_model_cards_plain_transformers_code_transcribes_as_the_task_does(tiny_wav2vec2, clips, tmp_path):
    task = task_for(tiny_wav2vec2, clips)
    model = task.build_model().eval()
    with torch.no_grad():
        model.lm_head.bias[0] = -5.0  # the blank rarely best: the random head writes characters
    task.save(model, str(tmp_path / "best"))
    clip = task.dataset(task.eval_rows, train=False)[0]["audio"]
    expected = task.batch_outputs(task.forward(model, task.collate([{"audio": clip}])), {})[0].text
    assert expected  # the comparison is not of two empty strings
    code = task.card_usage().split("```python\n")[1].split("```")[0].replace("path/to/best", str(tmp_path / "best"))
    scope = {"samples_16khz_mono": clip}
    exec(code, scope)  # the card's own lines, as a user would paste them
    assert scope["text"] == expected


def test_a_source_with_its_own_ctc_head_and_vocabulary_keeps_them(tmp_path, clips):
    """A fine-tuned model (wav2vec2-base-960h) spells in capitals: transcripts are cased to fit its vocabulary."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    from tunesmith.tasks._ctc import new_processor

    processor = new_processor(Wav2Vec2FeatureExtractor(return_attention_mask=False), ["YES NO STOP ABC"])
    torch.manual_seed(0)
    Wav2Vec2ForCTC(tiny_wav2vec2_config(vocab_size=len(processor.tokenizer), pad_token_id=0)).save_pretrained(tmp_path / "src")
    processor.save_pretrained(tmp_path / "src")
    head = Wav2Vec2ForCTC.from_pretrained(tmp_path / "src").lm_head.weight
    task = task_for(tmp_path / "src", clips)
    model = task.build_model()
    assert task.ctc.processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert torch.equal(model.lm_head.weight, head)
    tokenizer = processor.tokenizer
    assert task.dataset(task.train_rows.subset([0]), train=True).labels[0] == tokenizer("YES").input_ids


def test_whisper_only_settings_and_sources_that_are_no_speech_encoder_are_refused(tiny_wav2vec2, clips, tiny_bert):
    with pytest.raises(ConfigError, match="speech_recognition.language: only Whisper uses it"):
        task_for(tiny_wav2vec2, clips, language="en")
    with pytest.raises(ConfigError, match=r"\(bert\) is neither a Whisper .* nor a speech encoder"):
        task_for(tiny_bert, clips)


@pytest.mark.parametrize("family", ["hubert", "wavlm", "data2vec-audio"])
def test_other_waveform_encoders_train_with_ctc_and_their_feature_encoder_is_the_stem(family, tmp_path, clips):
    from transformers import AutoConfig, AutoModel, Wav2Vec2FeatureExtractor

    config = AutoConfig.for_model(family, **TINY)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(tmp_path / family)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(tmp_path / family)
    task = task_for(tmp_path / family, clips)
    model = task.build_model()
    groups = frozen_as_configured(task, model, task.config)
    assert groups[0].name == "stem" and all(".feature_extractor." in n or ".feature_projection." in n
                                            or "pos_conv_embed" in n or "masked_spec" in n for n, _ in groups[0].params)
    data = task.dataset(task.train_rows, train=True)
    loss, _ = task.loss(model, task.collate([data[i] for i in range(4)]))
    loss.backward()
    assert torch.isfinite(loss) and not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def speech_commands(shared_data: Path, folder: Path, words: set[str]) -> tuple[Path, Path]:
    """train.csv and test.csv (path, transcript, speaker) of the subset's clips of `words`."""
    root = shared_data / "speech_commands_subset"
    with (root / "metadata.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["transcript"] in words]
    tables = {}
    for split in ("train", "test"):
        tables[split] = folder / f"{split}.csv"
        with tables[split].open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "transcript", "speaker"])
            writer.writeheader()
            writer.writerows({"path": str(root / r["path"]), "transcript": r["transcript"], "speaker": r["speaker"]}
                             for r in rows if r["split"] == split)
    return tables["train"], tables["test"]


@pytest.mark.slow  # 20-45 s on two shared CPU cores
def test_a_short_ctc_fine_tune_on_spoken_words_lowers_the_loss_and_best_runs_in_transformers(shared_data,
                                                                                              tiny_wav2vec2, tmp_path):
    """Three keywords (72 train clips, 24 test clips by other speakers), two epochs: the random encoder
    learns to say blank (the loss falls from ~155 to ~80; its transcripts become empty), all scores finite."""
    train, test = speech_commands(shared_data, tmp_path, {"yes", "no", "stop"})
    result = tunesmith.finetune({
        "task": "speech-recognition", "output_dir": str(tmp_path / "run"), "model": {"source": str(tiny_wav2vec2)},
        "data": {"train": str(train), "validation": str(test)},
        "speech_recognition": {"audio_column": "path", "text_column": "transcript"},
        "training": {"num_train_epochs": 2, "learning_rate": 3e-3, "per_device_train_batch_size": 8, "logging_steps": 3,
                     "warmup_ratio": 0.0}}, quiet=True)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in records if r["phase"] == "train"]
    assert len(losses) >= 4 and losses[-1] < 0.7 * losses[0], losses
    assert result.final["loss"] < result.baseline["loss"]
    assert all(np.isfinite(result.final[k]) for k in ("wer", "cer", "empty_predictions", "loss"))
    best = result.run_dir / "best"
    assert json.loads((best / "config.json").read_text())["architectures"] == ["Wav2Vec2ForCTC"]
    one = tmp_path / "one.csv"  # a batch of one clip, as the card runs it (wav2vec2-base's norm sees the padding)
    one.write_text("".join(test.read_text().splitlines(keepends=True)[:2]))
    predicted = list(csv.DictReader(tunesmith.predict(str(result.run_dir), str(one), str(tmp_path / "out.csv")).open()))
    code = (best / "README.md").read_text().split("```python\n")[1].split("```")[0]
    scope = {"samples_16khz_mono": soundfile.read(predicted[0]["path"], dtype="float32")[0]}
    exec(code.replace("path/to/best", str(best)), scope)
    assert scope["text"] == predicted[0]["predicted_text"]
