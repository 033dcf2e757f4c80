"""Image segmentation: the three data layouts and their checks, paired augmentation, the scores, the
torchvision models' groups and `best/`, and a real fine-tune on cell nuclei (../shared, slow)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tunesmith
from tunesmith.config import load_config
from tunesmith.data.masks import IGNORE, MaskReader, read_segmentation
from tunesmith.errors import ConfigError, DataError
from tunesmith.models.torchvision_segmentation import (
    builder_code, create_segmentation_model, segmentation_layer_groups)
from tunesmith.report.segmentation_metrics import segmentation_metrics
from tunesmith.tasks import get_task
from tunesmith.tasks._segmentation import PairTransform

NUCLEI = Path(__file__).resolve().parents[3] / "shared" / "data" / "nuclei_dsb2018"


def _pairs(folder: Path, n: int = 8, classes: int = 2) -> Path:
    """`n` noisy photos with a bright square (class 1) and, for 3 classes, a dark bar (class 2), and their masks."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(n):
        h, w = 40 + 4 * (i % 3), 48
        pixels = rng.integers(90, 140, size=(h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), dtype=np.uint8)
        y, x = rng.integers(0, h - 16), rng.integers(0, w - 16)
        pixels[y:y + 16, x:x + 16] = 240
        mask[y:y + 16, x:x + 16] = 1
        if classes == 3:
            pixels[:, :4] = 10
            mask[:, :4] = 2
        Image.fromarray(pixels).save(folder / "images" / f"p{i}.jpg", quality=95)
        Image.fromarray(mask).save(folder / "masks" / f"p{i}.png")
    return folder


@pytest.fixture
def squares(tmp_path) -> Path:
    return _pairs(tmp_path / "squares")


def _config(train: Path, tmp_path: Path, **section) -> dict:
    return {"task": "image-segmentation", "output_dir": str(tmp_path / "run"), "model": {"source": "demo:mobilenet-v2"},
            "data": {"train": str(train), "validation_split": 0.25},
            "image_segmentation": {"crop_size": 32, **section},
            "training": {"num_train_epochs": 1, "per_device_train_batch_size": 3, "dataloader_num_workers": 0}}


def contract_case(request, make) -> dict:
    """The task contract's case (tests/tasks/test_contract.py): the real MobileNetV2 trunk, LR-ASPP, small photos."""
    folder = _pairs(make.tmp_path / "pairs", classes=3)
    return {"model": {"source": "demo:mobilenet-v2"}, "data": {"train": str(folder), "validation_split": 0.25}}


def _coco(tmp_path: Path, annotations: list[dict], categories=({"id": 3, "name": "cell"},)) -> Path:
    Image.fromarray(np.full((20, 30, 3), 100, dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((20, 30, 3), 100, dtype=np.uint8)).save(tmp_path / "b.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 30, "height": 20},
                       {"id": 2, "file_name": "b.png", "width": 30, "height": 20}],
            "annotations": annotations, "categories": list(categories)}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


SQUARE = [[2.0, 2.0, 12.0, 2.0, 12.0, 10.0, 2.0, 10.0]]


def test_coco_polygons_become_class_maps_and_an_image_without_objects_is_all_background(tmp_path):
    path = _coco(tmp_path, [{"id": 7, "image_id": 1, "category_id": 3, "segmentation": SQUARE, "iscrowd": 0},
                            {"id": 8, "image_id": 1, "category_id": 3, "iscrowd": 1,
                             "segmentation": {"size": [20, 30], "counts": [25 * 20, 20, 600 - 25 * 20 - 20]}}])
    reader = MaskReader()
    rows, names = read_segmentation(path, "image", "mask", None, reader)
    assert names == ["background", "cell"] and len(rows) == 2
    first, second = (reader.read(ref) for ref in rows.labels)
    assert first.shape == (20, 30) and set(np.unique(first)) == {0, 1, IGNORE}
    assert first[5, 5] == 1 and first[15, 20] == 0 and (first == IGNORE).sum() == 20  # the crowd run is ignored
    assert not second.any()  # image 2 has no annotations: a valid all-background image


@pytest.mark.parametrize(("annotation", "says"), [
    ({"id": 9, "image_id": 1, "category_id": 5, "segmentation": SQUARE}, "annotation 9 has category_id 5"),
    ({"id": 9, "image_id": 4, "category_id": 3, "segmentation": SQUARE}, "refers to image_id 4"),
    ({"id": 9, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4]}, "annotation 9 has no usable segmentation"),
])
def test_malformed_coco_annotations_are_named(tmp_path, annotation, says):
    with pytest.raises(DataError, match=says):
        read_segmentation(_coco(tmp_path, [annotation]), "image", "mask", None, MaskReader())


def test_a_mask_of_another_size_or_an_rgb_mask_is_skipped_or_named(squares, tmp_path):
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(squares / "masks" / "p1.png")
    Image.fromarray(np.zeros((40, 48, 3), dtype=np.uint8)).save(squares / "masks" / "p2.png")
    task = get_task(load_config(_config(squares, tmp_path) | {"data": {"train": str(squares), "validation_split": 0.25,
                                                                       "bad_rows": "error"}}))
    with pytest.raises(DataError, match=r"p1.jpg: its mask is 10x10 but the image is 48x44.*p2.jpg: mask .*mode RGB: save one class"):
        task.preflight()
    task = get_task(load_config(_config(squares, tmp_path)))
    task.preflight()
    assert len(task.train_rows) + len(task.eval_rows) == 6
    assert {Path(b["path"]).name for split in task.bad_pairs.values() for b in split} == {"p1.jpg", "p2.jpg"}


def test_class_names_are_numbered_from_the_masks_and_a_class_beyond_the_names_is_refused(tmp_path):
    folder = _pairs(tmp_path / "three", classes=3)
    task = get_task(load_config(_config(folder, tmp_path)))
    task.preflight()
    assert task.label_names == ["background", "class_1", "class_2"]
    task = get_task(load_config(_config(folder, tmp_path, class_names=["background", "square"]) |
                                {"data": {"train": str(folder), "validation_split": 0.25, "bad_rows": "error"}}))
    with pytest.raises(DataError, match="its mask holds class 2, but there are 2 classes"):
        task.preflight()


def test_a_table_of_pairs_and_instance_id_masks(squares, tmp_path):
    instance = np.zeros((40, 48), dtype=np.uint16)
    instance[1:5, 1:5], instance[10:20, 10:20] = 300, 7  # 16-bit object ids: each is the one object class
    Image.fromarray(instance).save(squares / "masks" / "p0.png")
    table = squares / "pairs.csv"
    with table.open("w", newline="") as f:
        csv.writer(f).writerows([["photo", "labels"], *[[f"images/p{i}.jpg", f"masks/p{i}.png"] for i in range(8)]])
    reader = MaskReader("instances")
    rows, names = read_segmentation(table, "photo", "labels", None, reader)
    assert names is None and len(rows) == 8
    mask = reader.read(rows.labels[0])
    assert mask.dtype == np.uint8 and mask.sum() == 16 + 100
    with pytest.raises(ValueError, match="class indices must be below 255"):
        MaskReader("classes").read(rows.labels[0])


def test_augmentation_moves_the_mask_with_the_pixels():
    rng = np.random.default_rng(1)
    mask = np.kron(rng.random((5, 7)) > 0.5, np.ones((8, 8))).astype(np.uint8)[:37, :53]  # blocks: few edges
    image = Image.fromarray(np.stack([mask * 255] * 3, axis=-1).astype(np.uint8))
    for scales, agree in (((1.0, 1.0), 1.0), ((1.2, 1.8), 0.9)):  # resized pixels blur at the edges; masks do not
        transform = PairTransform([0.0] * 3, [1.0] * 3, "light", crop_size=48, scale_range=scales, vflip=True)
        for seed in range(5):
            torch.manual_seed(seed)
            pixels, target = transform(image, mask)
            assert pixels.shape[1:] == target.shape == (48, 48)
            known = target != IGNORE
            assert known.sum() > 500 and ((pixels[0][known] > 0.5).long() == target[known]).float().mean() >= agree


def test_scores_from_the_summed_confusion_matrix():
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, IGNORE]], dtype=np.uint8)
    predicted = np.array([[0, 1, 1, 1], [0, 0, 0, 1]], dtype=np.uint8)
    scores = segmentation_metrics([truth], [predicted], ["background", "cell"])
    # background: 3 hits of 4 true, 4 predicted (ignored pixel left out); cell: 2 hits of 3 true, 3 predicted.
    assert scores["per_class"]["background"] == {"iou": pytest.approx(3 / 5), "dice": pytest.approx(6 / 8), "pixels": 4}
    assert scores["per_class"]["cell"]["iou"] == pytest.approx(2 / 4) and scores["dice"] == pytest.approx(4 / 6)
    assert scores["miou"] == pytest.approx((3 / 5 + 2 / 4) / 2) and scores["pixel_accuracy"] == pytest.approx(5 / 7)


@pytest.mark.parametrize(("source", "head"), [
    ("demo:mobilenet-v2", "lraspp"), ("demo:mobilenet-v2", "deeplabv3"), ("demo:mobilenet-v2", "fcn"),
    ("torchvision:lraspp_mobilenet_v3_large", None), ("torchvision:fcn_resnet50", None)])
def test_groups_cut_at_each_stride_and_best_loads_into_plain_torchvision(source, head):
    # torchvision's own builders without weights: their downloads are not reachable offline
    model, spec = create_segmentation_model(source, 3, None, head or "lraspp", pretrained=head is not None)
    groups = segmentation_layer_groups(model)
    assert groups[0].name == "stem" and groups[-1].name == "head" and len(groups) >= 5
    owned = [id(p) for g in groups for _, p in g.params]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())
    namespace: dict = {}
    exec(builder_code(spec), namespace)  # the model card's code: plain torchvision, no tunesmith
    namespace["model"].load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 80)
    model.eval(), namespace["model"].eval()
    assert torch.equal(model(x)["out"], namespace["model"](x)["out"]) and model(x)["out"].shape == (1, 3, 64, 80)


def test_a_trunk_weights_file_must_fit_its_architecture(tmp_path):
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    model, spec = create_segmentation_model(str(path), 2, "resnet18", "lraspp")
    assert spec["return_layers"] == {"layer2": "low", "layer4": "high"}
    from tunesmith.errors import ModelSourceError

    with pytest.raises(ModelSourceError, match="do not fit a mobilenet_v2 trunk"):
        create_segmentation_model(str(path), 2, "mobilenet_v2", "lraspp")


def test_auto_augment_is_refused(squares, tmp_path):
    config = _config(squares, tmp_path) | {"augmentation": {"auto_augment": "rand-m9-mstd0.5"}}
    task = get_task(load_config(config))
    task.preflight()
    with pytest.raises(ConfigError, match="moves masks with the pixels"):
        task.dataset(task.train_rows, train=True)


def test_run_saves_predicts_mask_pngs_and_draws_overlays(squares, tmp_path):
    result = tunesmith.finetune(_config(squares, tmp_path) | {"training": {"max_steps": 2, "dataloader_num_workers": 0,
                                                                            "per_device_train_batch_size": 3}},
                                quiet=True)
    run = result.run_dir
    assert result.baseline["dice"] == 0.0 and result.baseline["per_class"]["background"]["iou"] > 0.5  # zero head
    saved = json.loads((run / "best" / "config.json").read_text())
    assert saved["label_names"] == ["background", "class_1"] and saved["head"] == "lraspp"
    validation = [json.loads(line) for line in (run / "predictions_validation.jsonl").read_text().splitlines()]
    assert Path(validation[0]["overlay_image"]).is_file() and "IoU" in (run / "README.md").read_text()
    assert "beside its true and predicted labels" in (run / "report.html").read_text()
    out = tunesmith.predict(str(run), str(squares / "images"), str(tmp_path / "masks.csv"))
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 8 and not rows[0]["overlay_image"]
    with Image.open(rows[0]["mask_file"]) as mask:
        assert mask.mode == "P" and mask.size == (48, 40)
    assert float(rows[0]["fraction_background"]) + float(rows[0]["fraction_class_1"]) == pytest.approx(1.0, abs=1e-5)
    from pycocotools import mask as coco_mask

    results = json.loads((tmp_path / "masks_files" / "segmentation_results.json").read_text())
    assert len(results) == sum(float(r["fraction_class_1"]) > 0 for r in rows)  # one per image showing the class
    for r in results:  # COCO run-length results decode to the very pixels of the PNG
        row = next(x for x in rows if x["image"] == r["file_name"])
        decoded = coco_mask.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()})
        assert np.array_equal(decoded, np.asarray(Image.open(row["mask_file"])) == r["category_id"])
    assert set(tunesmith.evaluate(str(run), str(squares))) >= {"miou", "dice", "pixel_accuracy", "per_class"}


@pytest.mark.slow
@pytest.mark.skipif(not NUCLEI.is_dir(), reason="../shared/data/nuclei_dsb2018 is absent")
def test_nuclei_fine_tune_finds_the_cells(tmp_path):
    """A real fine-tune on the 2018 Data Science Bowl nuclei (COCO polygons): Dice rises from 0 (new head)."""
    config = {"task": "image-segmentation", "output_dir": str(tmp_path / "run"), "model": {"source": "demo:mobilenet-v2"},
              "data": {"train": str(NUCLEI / "annotations" / "instances_train.json"),
                       "validation": str(NUCLEI / "annotations" / "instances_val.json"), "max_train_samples": 64},
              "image_segmentation": {"image_root": str(NUCLEI / "images"), "vflip": True},
              "training": {"num_train_epochs": 2}}
    result = tunesmith.finetune(config, quiet=True)
    assert result.baseline["dice"] == 0.0
    # 16 steps: Dice 0.59 here (5 epochs of all 160 images reach 0.84, benchmarks/RESULTS.md)
    assert result.final["dice"] >= 0.45 and result.final["miou"] >= 0.58, result.final
