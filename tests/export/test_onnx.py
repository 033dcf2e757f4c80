"""ONNX export of a fine-tuned image model, checked against PyTorch on the images it is given."""

from __future__ import annotations

import json

import pytest

import tunesmith

pytest.importorskip("onnxruntime", reason="ONNX export needs the onnx extra: pip install 'tunesmith[onnx]'")
pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra: pip install 'tunesmith[onnx]'")


def test_export_matches_pytorch_on_the_given_images(image_config, color_images, tmp_path):
    image_config["training"]["num_train_epochs"] = 1
    run = tunesmith.finetune(image_config, quiet=True).run_dir
    report = tunesmith.export_onnx(str(run), str(color_images), str(tmp_path / "model.onnx"))
    assert report["rows"] == 24 and report["max_abs_diff"] < 1e-3 and report["top1_agreement"] == 1.0
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (batch_input,) = session.get_inputs()
    assert batch_input.name == "pixel_values" and session.get_outputs()[0].shape[1] == 2
    assert session.run(None, {"pixel_values": np.zeros((3, 3, 64, 64), np.float32)})[0].shape == (3, 2)
    assert json.loads((run / "best" / "config.json").read_text())["pretrained_cfg"]["input_size"] == [3, 64, 64]


def test_on_a_bf16_cpu_the_export_is_an_fp32_graph(image_config, color_images, tmp_path, monkeypatch):
    """Under bf16 autocast (`auto` on an AMX CPU, a GPU) the export traced bf16 ops, and onnxruntime refused the
    graph ("Type 'tensor(bfloat16)' ... of operator (Conv) is invalid")."""
    monkeypatch.setenv("TUNESMITH_CPU_BF16", "1")  # `auto` picks bf16, for training and for the export's model
    image_config["training"]["num_train_epochs"] = 1
    run = tunesmith.finetune(image_config, quiet=True).run_dir
    report = tunesmith.export_onnx(str(run), str(color_images), str(tmp_path / "model.onnx"))
    assert report["max_abs_diff"] < 1e-3 and report["top1_agreement"] == 1.0


def test_export_command(image_config, color_images, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    image_config["training"]["num_train_epochs"] = 1
    run = tunesmith.finetune(image_config, quiet=True).run_dir
    out = CliRunner().invoke(app, ["export", str(run / "best"), "--set", "task=image-classification",
                                   "--data", str(color_images / "red"), "--output", str(tmp_path / "m.onnx")])
    assert out.exit_code == 0, out.output
    said = " ".join(out.output.split())  # the console wraps long lines
    assert "max abs difference to PyTorch" in said and "on 12 rows" in said


def test_export_of_a_text_model_takes_any_sequence_length(tiny_bert, reviews, tmp_path):
    """Batches of different lengths (length-grouped, 16 rows each) all run through one file."""
    import numpy as np
    import onnxruntime

    out = tmp_path / "text.onnx"
    report = tunesmith.export_onnx(str(tiny_bert), str(reviews), str(out), ["training.per_device_eval_batch_size=16"])
    assert report["rows"] == 600 and report["max_abs_diff"] < 1e-3 and report["top1_agreement"] == 1.0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for length in (3, 17, 60):
        feed = {i.name: np.ones((2, length), np.int64) for i in session.get_inputs()}
        assert session.run(None, feed)[0].shape == (2, 2)


def test_failed_export_leaves_no_file_and_keeps_an_earlier_one(tiny_bert, reviews, tmp_path, monkeypatch):
    from tunesmith.errors import ExportError
    from tunesmith.export import onnx

    out = tmp_path / "text.onnx"
    out.write_bytes(b"an earlier export")
    checked = onnx.export_and_check
    monkeypatch.setattr(onnx, "export_and_check", lambda *a, **k: checked(*a, **{**k, "atol": -1.0}))
    with pytest.raises(ExportError, match="differ from PyTorch.*not written"):
        tunesmith.export_onnx(str(tiny_bert), str(reviews), str(out), ["data.max_length=16"])
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.onnx"]


def test_export_to_a_directory_is_refused_before_the_model_loads(reviews, tmp_path):
    from tunesmith.errors import DataError

    (tmp_path / "m.onnx").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'm.onnx'} is a directory"):  # the model does not exist
        tunesmith.export_onnx(str(tmp_path / "no-such-model"), str(reviews), str(tmp_path / "m.onnx"))
