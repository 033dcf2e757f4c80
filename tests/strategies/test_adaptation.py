"""`tunesmith adapt`: BatchNorm re-estimation and tent on unlabelled target images (tunesmith/adaptation.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

import tunesmith
from tunesmith.cli import app


def fogged(source, target, keep: float = 0.3, haze: int = 200):
    """A copy of a class-folder image set under fog: each pixel `keep` of itself, the rest a light grey."""
    for path in source.rglob("*.jpg"):
        pixels = np.asarray(Image.open(path)).astype(np.float32)
        out = target / path.parent.name / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(keep * pixels + (1 - keep) * haze, 0, 255).astype(np.uint8)).save(out, quality=90)
    return target


@pytest.fixture(scope="module")
def trained(color_images, tmp_path_factory):
    """EfficientNet-Lite0 fine-tuned two epochs on the clear red/blue images, and a fogged copy of them."""
    root = tmp_path_factory.mktemp("adapt")
    result = tunesmith.finetune({
        "task": "image-classification", "output_dir": str(root / "run"), "model": {"source": "demo:efficientnet-lite0"},
        "data": {"train": str(color_images), "validation_split": 0.25}, "image_classification": {"image_size": 64},
        "training": {"num_train_epochs": 2, "per_device_train_batch_size": 6, "learning_rate": 5e-3,
                     "dataloader_num_workers": 0},
    }, quiet=True)
    return result.run_dir, fogged(color_images, root / "fog")


def test_reestimating_batchnorm_on_fogged_images_wins_back_accuracy(trained, tmp_path):
    run, fog = trained
    result = tunesmith.adapt(str(run), str(fog), tmp_path / "adapted", evaluate=str(fog))
    assert result.batchnorm_layers > 30 and result.target_rows == 24
    assert result.after["loss"] < result.before["loss"] and result.after["accuracy"] > result.before["accuracy"]
    # only statistics moved: every learnt weight is the source's
    before, after = load_file(str(run / "best" / "model.safetensors")), load_file(str(tmp_path / "adapted" / "model.safetensors"))
    moved = {k for k in before if not np.array_equal(before[k].numpy(), after[k].numpy())}
    assert moved and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in moved)
    assert (tmp_path / "adapted" / "config.yaml").is_file() and not (tmp_path / "adapted" / "calibration.json").exists()


def test_tent_moves_only_the_batchnorm_scales_and_shifts_and_the_cli_prints_both_scores(trained, tmp_path):
    run, fog = trained
    out = tmp_path / "tent"
    done = CliRunner().invoke(app, ["adapt", str(run), "--data", str(fog), "--output", str(out), "--method", "tent",
                                    "--evaluate", str(fog)])
    assert done.exit_code == 0, done.output
    assert "BatchNorm layers adapted on 24 target rows" in done.output and "adapted" in done.output
    before, after = load_file(str(run / "best" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    moved = {k for k in before if not np.array_equal(before[k].numpy(), after[k].numpy())}
    assert any(k.endswith("bn1.weight") for k in moved)
    assert not any(k.endswith(("conv.weight", "classifier.weight")) or "conv_" in k and k.endswith("weight")
                   for k in moved)


def test_the_collapse_guard_stops_tent_and_keeps_the_last_good_step(trained, tmp_path):
    run, fog = trained
    result = tunesmith.adapt(str(run), str(fog), tmp_path / "collapsed", "tent", epochs=20, learning_rate=5.0,
                             overrides=["training.per_device_eval_batch_size=4"])
    assert result.stopped is not None and "collapse guard" in result.stopped
    assert (tmp_path / "collapsed" / "model.safetensors").is_file()


def test_a_model_without_batchnorm_and_a_taken_output_are_refused(tiny_bert, reviews, tmp_path):
    with pytest.raises(tunesmith.ModelSourceError, match="has no BatchNorm layer.*tunesmith train"):
        tunesmith.adapt(str(tiny_bert), str(reviews), tmp_path / "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    with pytest.raises(tunesmith.RunDirError, match="taken exists and is not empty"):
        tunesmith.adapt(str(tiny_bert), str(reviews), tmp_path / "taken")
    with pytest.raises(tunesmith.ConfigError, match="method: 'adabn' is not one of batchnorm, tent"):
        tunesmith.adapt(str(tiny_bert), str(reviews), tmp_path / "new", method="adabn")
