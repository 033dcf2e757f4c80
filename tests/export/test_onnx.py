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
