"""Layer groups of transformer encoders, and model source resolution."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification

from tunesmith.errors import ModelSourceError
from tunesmith.models.layer_groups import transformer_layer_groups
from tunesmith.models.sources import resolve_source


def test_bert_groups_cover_every_parameter_once():
    model = BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                                     intermediate_size=32, vocab_size=100))
    groups = transformer_layer_groups(model)
    assert [g.name for g in groups] == ["embeddings", "block.0", "block.1", "block.2", "head"]
    names = [n for g in groups for n, _ in g.params]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert {n for n, _ in groups[-1].params} == {"bert.pooler.dense.weight", "bert.pooler.dense.bias",
                                                 "classifier.weight", "classifier.bias"}
    assert all(n.startswith("bert.encoder.layer.1.") for n, _ in groups[2].params)


def test_encoder_decoder_groups_run_input_side_first_and_cover_every_parameter_once():
    from transformers import (BartConfig, BartForConditionalGeneration, EncoderDecoderConfig, EncoderDecoderModel,
                              T5Config, T5ForConditionalGeneration)

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=100, d_model=16, d_kv=4, d_ff=32, num_layers=2,
                                             num_decoder_layers=3, num_heads=2))
    bart = BartForConditionalGeneration(BartConfig(vocab_size=100, d_model=16, encoder_layers=2, decoder_layers=2,
                                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                                   encoder_ffn_dim=32, decoder_ffn_dim=32))
    bert = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    warm = EncoderDecoderModel(EncoderDecoderConfig.from_encoder_decoder_configs(bert, bert))
    for model, blocks, head in ((t5, (2, 3), True), (bart, (2, 2), False), (warm, (2, 2), True)):
        groups = transformer_layer_groups(model)
        expected = (["embeddings"] + [f"encoder.block.{i}" for i in range(blocks[0])]
                    + [f"decoder.block.{i}" for i in range(blocks[1])] + (["head"] if head else []))
        assert [g.name for g in groups] == expected, type(model).__name__
        names = [n for g in groups for n, _ in g.params]
        assert sorted(names) == sorted(n for n, _ in model.named_parameters()), type(model).__name__
    assert [n for n, _ in transformer_layer_groups(t5)[0].params] == ["shared.weight"]  # tied lm_head and both sides
    cross = [n for n, _ in transformer_layer_groups(warm)[3].params if "crossattention" in n]
    assert cross and all(n.startswith("decoder.bert.encoder.layer.0.") for n in cross)


def test_distilbert_groups():
    model = DistilBertForSequenceClassification(DistilBertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, vocab_size=100))
    groups = transformer_layer_groups(model)
    assert [g.name for g in groups] == ["embeddings", "block.0", "block.1", "head"]
    assert {n for n, _ in groups[-1].params} >= {"classifier.weight", "pre_classifier.weight"}


def test_demo_minilm_resolves_to_a_local_folder():
    source = resolve_source("demo:minilm")
    assert source.local
    config = json.loads(open(f"{source.location}/config.json").read())
    assert config["num_hidden_layers"] == 6 and config["hidden_size"] == 384


def test_real_minilm_has_six_blocks():
    model = AutoModelForSequenceClassification.from_pretrained(resolve_source("demo:minilm").location,
                                                               num_labels=2, local_files_only=True)
    groups = transformer_layer_groups(model)
    assert len(groups) == 8
    assert sum(g.num_params for g in groups) == sum(p.numel() for p in model.parameters())


def test_unknown_demo_alias():
    with pytest.raises(ModelSourceError, match="unknown demo model 'demo:nope'; available: .*demo:minilm \(text\)"):
        resolve_source("demo:nope")


def test_path_that_is_not_a_model(tmp_path):
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ModelSourceError, match="is not a model"):
        resolve_source(str(tmp_path))
    with pytest.raises(ModelSourceError, match="model path not found"):
        resolve_source(str(tmp_path / "missing" / "model"))


def test_custom_code_needs_opt_in(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(ModelSourceError, match="trust_remote_code: true"):
        resolve_source(str(tmp_path))
    assert resolve_source(str(tmp_path), trust_remote_code=True).local


def test_run_directory_resolves_to_best(tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "config.json").write_text("{}")
    assert resolve_source(str(tmp_path)).location.endswith("best")


def test_hub_id_is_not_a_path():
    assert not resolve_source("bert-base-uncased").local
    assert not resolve_source("sentence-transformers/all-MiniLM-L6-v2").local


def test_malformed_safetensors_is_a_clean_error(tiny_bert, tiny_config, tmp_path):
    import shutil
    import struct

    import tunesmith

    folder = tmp_path / "broken"
    shutil.copytree(tiny_bert, folder)
    # a header length far larger than the file: must fail fast, not allocate or hang
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    tiny_config["model"]["source"] = str(folder)
    with pytest.raises(tunesmith.ModelSourceError, match="cannot load the model in"):
        tunesmith.finetune(tiny_config, quiet=True)


def test_an_audio_encoder_starts_with_its_convolutional_stem():
    """Whisper's classifier has no token embeddings, and keeps the family's encoder-decoder config
    with no decoder: [stem (convolutions + position table), block 0..N-1, head (norm, projector, classifier)]."""
    from transformers import WhisperConfig, WhisperForAudioClassification

    model = WhisperForAudioClassification(WhisperConfig(
        num_mel_bins=8, d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_source_positions=50,
        classifier_proj_size=8, num_labels=3))
    groups = transformer_layer_groups(model)
    assert [g.name for g in groups] == ["stem", "block.0", "block.1", "head"]
    assert [n for n, _ in groups[0].params] == ["encoder.conv1.weight", "encoder.conv1.bias", "encoder.conv2.weight",
                                                "encoder.conv2.bias", "encoder.embed_positions.weight"]
    assert {n for n, _ in groups[-1].params} == {"encoder.layer_norm.weight", "encoder.layer_norm.bias", "projector.weight",
                                                 "projector.bias", "classifier.weight", "classifier.bias"}
    assert groups[-1].modules == [model.projector, model.classifier]  # not the encoder, whose blocks may be frozen


def test_whisper_for_speech_recognition_runs_stem_embeddings_encoder_decoder_head():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration(WhisperConfig(
        num_mel_bins=8, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_source_positions=50, vocab_size=64,
        max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1))
    groups = transformer_layer_groups(model)
    assert [g.name for g in groups] == ["stem", "embeddings", "encoder.block.0", "encoder.block.1", "decoder.block.0",
                                        "decoder.block.1", "head"]
    assert {n for n, _ in groups[0].params} == {f"model.encoder.{m}" for m in ("conv1.weight", "conv1.bias", "conv2.weight",
                                                                              "conv2.bias", "embed_positions.weight")}
    assert {n for n, _ in groups[1].params} == {"model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight"}
    owned = [id(p) for g in groups for _, p in g.params]
    assert len(owned) == len(set(owned)) == len(list(model.parameters()))
