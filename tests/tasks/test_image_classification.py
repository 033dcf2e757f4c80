"""Image classification end to end on small synthetic photos at 64 px (fast).

Real photos, at full size, are in tests/test_end_to_end_images.py (marked slow).
"""

from __future__ import annotations

import csv
import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import tunesmith
from tunesmith.config import load_config
from tunesmith.strategies.freezing import apply_freezing
from tunesmith.tasks import get_task


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_trains_saves_predicts_and_evaluates(image_config, color_images, tmp_path):
    image_config["training"]["num_train_epochs"] = 3
    result = tunesmith.finetune(image_config, quiet=True)
    run = result.run_dir
    assert result.final["accuracy"] >= 0.8 and result.baseline["accuracy"] == 0.5  # zero head: one class for all
    best = json.loads((run / "best" / "config.json").read_text())
    assert best["architecture"] == "efficientnet_lite0" and best["label_names"] == ["blue", "red"]
    assert best["pretrained_cfg"]["input_size"] == [3, 64, 64]
    assert (run / "best" / "model.safetensors").exists() and "local-dir:" in (run / "README.md").read_text()
    data = json.loads((run / "data.json").read_text())
    assert data["train"]["rows"] == 18 and data["validation"]["rows"] == 6 and data["unusable_images"]["train"] == []

    out = tunesmith.predict(str(run), str(color_images / "red"), str(tmp_path / "predictions.csv"))
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and set(rows[0]) == {"line", "image", "predicted_label", "score", "prob_blue", "prob_red"}
    assert sum(r["predicted_label"] == "red" for r in rows) >= 9
    assert float(rows[0]["prob_blue"]) + float(rows[0]["prob_red"]) == pytest.approx(1.0, abs=1e-5)
    metrics = tunesmith.evaluate(str(run / "best"), str(color_images))
    assert metrics["accuracy"] >= 0.8 and sum(map(sum, metrics["confusion_matrix"])) == 24


def test_the_baseline_also_scores_the_pretrained_features_under_a_new_head(image_config):
    image_config["training"].update({"max_steps": 1})
    result = tunesmith.finetune(image_config, quiet=True)
    baseline = next(r for r in records(result.run_dir) if r["phase"] == "baseline")
    assert baseline["accuracy"] == 0.5  # the zero head: one class for all, chance by construction
    features = baseline["features"]
    assert features["accuracy"] >= 0.8 and features["macro_f1"] >= 0.8  # red and blue apart before any training
    assert features["probe"] == "logistic regression" and features["train_rows"] == 18
    assert result.baseline["features"] == features  # the run's result carries it to the CLI and the model card
    for shown in (result.report, result.run_dir / "README.md"):
        text = shown.read_text()
        assert "pre-trained features (linear probe)" in text and "untrained head" in text


def test_no_features_score_without_pretrained_weights(image_config):
    image_config["training"].update({"max_steps": 1})
    image_config["model"]["pretrained"] = False  # random features: there is nothing pre-trained to score
    result = tunesmith.finetune(image_config, quiet=True)
    assert "features" not in result.baseline

def test_top5_is_reported_with_more_than_five_classes(color_images, tmp_path):
    from PIL import Image

    for i in range(6):
        (tmp_path / "many" / f"c{i}").mkdir(parents=True)
        for j in range(3):
            Image.new("RGB", (16, 16), (40 * i, 10 * j, 0)).save(tmp_path / "many" / f"c{i}" / f"{j}.png")
    config = load_config({"task": "image-classification", "model": {"source": "resnet10t", "pretrained": False},
                          "data": {"train": str(tmp_path / "many"), "validation": str(tmp_path / "many")},
                          "image_classification": {"image_size": 32}})
    task = get_task(config)
    task.preflight()
    import numpy as np

    rows = task.eval_rows.subset(list(range(18)))
    rows.labels = [task.label_names[i] for i in [0, 1, 2, 3, 4, 5] * 3]
    outputs = list(np.eye(6)[[1, 0, 2, 3, 4, 5] * 3])
    metrics = task.metrics(rows, outputs)
    assert metrics["accuracy"] == pytest.approx(4 / 6) and metrics["top5_accuracy"] == 1.0


def test_a_folder_of_train_and_test_folders_trains_on_train_and_validates_on_test(color_images, tmp_path):
    import shutil

    shutil.copytree(color_images, tmp_path / "data" / "train")
    shutil.copytree(color_images / "red", tmp_path / "data" / "test" / "red")
    shutil.copytree(color_images / "blue", tmp_path / "data" / "test" / "blue")
    config = load_config({"task": "image-classification", "model": {"source": "resnet10t", "pretrained": False},
                          "data": {"train": str(tmp_path / "data")}, "image_classification": {"image_size": 32}})
    task = get_task(config)
    task.preflight()
    assert task.label_names == ["blue", "red"]
    assert len(task.train_rows) == 24 and len(task.eval_rows) == 24
    assert all("/data/test/" in p for p in task.eval_rows.inputs["image"])


def test_frozen_stages_get_no_gradient_and_keep_batchnorm_statistics(image_config):
    config = load_config(image_config, ["strategy.freeze=3"])
    task = get_task(config)
    task.preflight()
    model = task.build_model()
    groups = task.layer_groups(model)
    apply_freezing(model, groups, 3)
    frozen = {n for g in groups[:3] for n, _ in g.params}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = task.collate([task.dataset(task.train_rows, train=True)[i] for i in range(6)])
    loss, _ = task.loss(model, batch)
    loss.backward()
    named = dict(model.named_parameters())
    assert all(named[n].grad is None for n in frozen)
    assert all(p.grad is not None for n, p in named.items() if n not in frozen)
    after = model.state_dict()
    frozen_stats = [k for k in after if k.startswith(("bn1.", "blocks.0.", "blocks.1.")) and "running" in k]
    live_stats = [k for k in after if k.startswith("blocks.2.") and "running" in k]
    assert frozen_stats and all(torch.equal(before[k], after[k]) for k in frozen_stats)
    assert any(not torch.equal(before[k], after[k]) for k in live_stats)


@pytest.fixture
def weights_file(tmp_path):
    """Random efficientnet_lite0 weights in a file, so the starting point of a run is known."""
    torch.manual_seed(1)
    path = tmp_path / "start.safetensors"
    save_file(timm.create_model("efficientnet_lite0", num_classes=2).state_dict(), str(path))
    return path


@pytest.mark.parametrize("train_batchnorm", [False, True])
def test_frozen_stages_in_a_run(image_config, weights_file, train_batchnorm):
    image_config["model"] = {"source": str(weights_file), "architecture": "efficientnet_lite0",
                             "train_batchnorm": train_batchnorm}
    image_config["strategy"] = {"freeze": 3}
    result = tunesmith.finetune(image_config, quiet=True)
    start, tuned = load_file(str(weights_file)), load_file(str(result.run_dir / "best" / "model.safetensors"))
    frozen = [k for k in tuned if k.startswith(("conv_stem.", "bn1.", "blocks.0.", "blocks.1."))]
    norms = [k for k in frozen if "running_" in k or (k.startswith("bn1.") or ".bn" in k) and "num_batches" not in k]
    convs = [k for k in frozen if k not in norms and "num_batches" not in k]
    assert all(torch.equal(start[k], tuned[k]) for k in convs)
    assert all(torch.equal(start[k], tuned[k]) for k in norms) != train_batchnorm
    assert any(not torch.equal(start[k], tuned[k]) for k in tuned if k.startswith("blocks.3."))


def test_augmented_runs_repeat_exactly(image_config, tmp_path):
    image_config["augmentation"] = {"preset": "strong", "mixup_alpha": 0.4, "cutmix_alpha": 1.0}
    image_config["training"].update(label_smoothing_factor=0.1, num_train_epochs=2)
    first = tunesmith.finetune(image_config, quiet=True)
    image_config["output_dir"] = str(tmp_path / "again")
    image_config["training"]["dataloader_num_workers"] = 2
    second = tunesmith.finetune(image_config, quiet=True)
    losses = [[(r.get("loss"), r.get("train_loss")) for r in records(run.run_dir)] for run in (first, second)]
    assert losses[0] == losses[1]


def test_bad_images_are_found_before_the_model_loads(image_config, color_images, tmp_path):
    import shutil

    folder = tmp_path / "with-bad"
    shutil.copytree(color_images, folder)
    (folder / "red" / "broken.png").write_text("not an image")
    image_config["data"]["train"] = str(folder)
    image_config["data"]["bad_rows"] = "error"
    image_config["model"]["source"] = "no_such_architecture_anywhere"
    with pytest.raises(tunesmith.DataError, match=r"1 unusable images \(.*broken.png: not an image"):
        tunesmith.finetune(image_config, quiet=True)
    image_config["data"]["bad_rows"] = "skip"
    image_config["model"]["source"] = "demo:efficientnet-lite0"
    image_config["training"]["num_train_epochs"] = 1
    result = tunesmith.finetune(image_config, quiet=True)
    data = json.loads((result.run_dir / "data.json").read_text())
    bad = data["unusable_images"]["train"] + data["unusable_images"]["validation"]
    assert [b["path"] for b in bad] == [str(folder / "red" / "broken.png")]
    assert data["train"]["skipped"] + data["validation"]["skipped"] == 1


def test_image_size_is_refused_for_fixed_size_models(image_config):
    image_config["model"] = {"source": "vit_tiny_patch16_224", "pretrained": False}
    with pytest.raises(tunesmith.ConfigError, match="image_classification.image_size: vit_tiny_patch16_224 takes a fixed input size"):
        task = get_task(load_config(image_config))
        task.label_names = ["a", "b"]
        task.build_model()


def test_inspect_and_cli(image_config, color_images, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    rows = tunesmith.inspect(image_config, ["strategy.freeze=head_only"])
    assert [r["group"] for r in rows][:2] == ["stem", "stage.0"] and rows[-1]["group"] == "head"
    assert [r["trains_in_epoch"][0] for r in rows].count(True) == 1
    image_config["training"]["num_train_epochs"] = 1
    result = tunesmith.finetune(image_config, quiet=True)
    runner = CliRunner()
    out = runner.invoke(app, ["predict", str(result.run_dir), "--data", str(color_images / "blue"),
                              "--output", str(tmp_path / "p.jsonl")])
    assert out.exit_code == 0, out.output
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 12
    out = runner.invoke(app, ["evaluate", str(result.run_dir), "--data", str(color_images)])
    assert out.exit_code == 0 and "confusion matrix" in out.output
    out = runner.invoke(app, ["predict", str(result.run_dir), "--data", str(tmp_path / "nowhere"),
                              "--output", str(tmp_path / "p.csv")])
    assert out.exit_code == 2 and "data not found" in out.output


def contract_case(request, make) -> dict:
    """The task contract's case (tests/tasks/test_contract.py): the real EfficientNet-Lite0 at 64 px."""
    return {"model": {"source": "demo:efficientnet-lite0"}, "data": {"train": str(request.getfixturevalue("color_images"))},
            "image_classification": {"image_size": 64}}
