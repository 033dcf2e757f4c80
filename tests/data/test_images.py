"""Image data: folder layouts, tables of paths, mode conversion, and unreadable images by path."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from tunesmith.data.images import ImageDataset, check_images, image_problem, open_rgb, read_images, split_folders
from tunesmith.errors import DataError


def add_bad_images(folder):
    """A truncated JPEG, a 0-byte file and a text file named .png, in class `red`."""
    good = sorted((folder / "red").glob("*.jpg"))[0].read_bytes()
    (folder / "red" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "red" / "empty.jpg").write_bytes(b"")
    (folder / "red" / "notes.png").write_text("this is not an image")
    return {str(folder / "red" / n) for n in ("truncated.jpg", "empty.jpg", "notes.png")}


@pytest.fixture
def images(color_images, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(color_images, folder)
    return folder


def test_class_folders_give_paths_and_labels(images):
    (images / "red" / "README.txt").write_text("ignored: not an image extension")
    rows = read_images(images, "image", "label", None, "skip")
    assert len(rows) == 24 and sorted(set(rows.labels)) == ["blue", "red"]
    assert all(p.endswith(".jpg") for p in rows.inputs["image"])


def test_train_and_val_subfolders_are_found(images, tmp_path):
    root = tmp_path / "split"
    shutil.copytree(images, root / "train")
    shutil.copytree(images, root / "val")
    assert split_folders(root) == (root / "train", root / "val")
    assert split_folders(images) is None


def test_train_and_test_subfolders_are_a_split_not_two_classes(images, tmp_path, caplog):
    root = tmp_path / "split"
    shutil.copytree(images, root / "train")
    shutil.copytree(images, root / "test")
    assert split_folders(root) == (root / "train", root / "test")
    shutil.copytree(images, root / "validation")
    with caplog.at_level("INFO", "tunesmith"):
        assert split_folders(root) == (root / "train", root / "validation")
    assert "validating on validation/ (test/ not used)" in caplog.text
    with pytest.raises(DataError, match=r"split: test/, train/, validation/ look like split folders .*"
                                        r"the layouts read are a folder with one subfolder"):
        read_images(root, "image", "label", None, "skip")  # e.g. data.validation pointed at the split folder


def test_nested_class_folders_are_refused_or_warned(images, tmp_path, caplog):
    wrapped = tmp_path / "wrapped"
    shutil.copytree(images, wrapped / "dataset")
    with pytest.raises(DataError, match=r"the only class folder, dataset/, holds folders of images \(blue, red\); "
                                        f"did you mean {wrapped / 'dataset'}"):
        read_images(wrapped, "image", "label", None, "skip")
    shutil.copytree(images / "red", images / "blue" / "navy")
    rows = read_images(images, "image", "label", None, "skip")
    assert sorted(set(rows.labels)) == ["blue", "red"] and rows.labels.count("blue") == 24
    assert "class folders hold subfolders of images (blue/ holds navy/); their images are labelled by the class " \
           "folder" in caplog.text


def test_table_of_relative_paths(images, tmp_path):
    table = images / "list.csv"
    table.write_text("path,kind\nred/red0.jpg,red\nblue/blue0.jpg,blue\n,blue\n")
    rows = read_images(table, "path", "kind", None, "skip")
    assert rows.inputs["path"] == [str(images / "red/red0.jpg"), str(images / "blue/blue0.jpg")]
    assert rows.skipped == 1 and rows.lines == [2, 3]
    with pytest.raises(DataError, match=r"1 rows with an empty path or label \(lines 4\)"):
        read_images(table, "path", "kind", None, "error")
    with pytest.raises(DataError, match="column 'image' not found; columns are 'path', 'kind' .*image_classification.image_column"):
        read_images(table, "image", "kind", None, "skip")
    rooted = tmp_path / "elsewhere.jsonl"
    rooted.write_text('{"image": "red/red1.jpg", "label": "red"}\n')
    assert read_images(rooted, "image", "label", str(images), "skip").inputs["image"] == [str(images / "red/red1.jpg")]


def test_unreadable_images_are_skipped_with_a_count(images):
    bad = add_bad_images(images)
    rows = read_images(images, "image", "label", None, "skip")
    kept, problems = check_images(rows, "image", "skip")
    assert len(kept) == 24 and kept.skipped == 3
    assert {p["path"] for p in problems} == bad
    reasons = {p["path"].rsplit("/", 1)[1]: p["problem"] for p in problems}
    assert "truncated" in reasons["truncated.jpg"]
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["notes.png"].startswith("not an image")


def test_unreadable_images_are_an_error_under_strict(images):
    bad = add_bad_images(images)
    rows = read_images(images, "image", "label", None, "error")
    with pytest.raises(DataError) as err:
        check_images(rows, "image", "error")
    message = str(err.value)
    assert "3 unusable images" in message and "data.bad_rows: skip" in message
    assert all(path in message for path in bad)


def test_missing_file_in_a_table(images):
    table = images / "list.csv"
    table.write_text("image,label\nred/red0.jpg,red\nred/gone.jpg,red\n")
    kept, problems = check_images(read_images(table, "image", "label", None, "skip"), "image", "skip")
    assert len(kept) == 1 and problems == [{"path": str(images / "red/gone.jpg"), "problem": "file not found"}]


def test_image_paths_that_exist_nowhere_name_the_folder_searched(images, tmp_path, monkeypatch):
    table = tmp_path / "lists" / "list.csv"
    table.parent.mkdir()
    table.write_text("image,label\nred/red0.jpg,red\nblue/blue0.jpg,blue\n")
    with pytest.raises(DataError, match=f"none of the 2 image paths exists .*looked up in {table.parent}, the table's "
                                        "folder .*set image_classification.image_root"):
        read_images(table, "image", "label", None, "skip")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"image_classification.image_root folder not found: pics \\(looked up relative to the "
                                        f"working directory {tmp_path}\\)"):
        read_images(table, "image", "label", "pics", "skip")
    relative = read_images(table.relative_to(tmp_path), "image", "label", str(images), "skip")
    assert relative.inputs["image"][0] == str(images / "red/red0.jpg")


@pytest.mark.parametrize("mode, suffix", [("L", "png"), ("P", "png"), ("RGBA", "png"), ("LA", "png"), ("1", "png"),
                                          ("I;16", "png"), ("I;16B", "tif"), ("I", "tif"), ("CMYK", "jpg"),
                                          ("CMYK", "tif"), ("YCbCr", "tif"), ("LAB", "tif"), ("RGB", "webp")])
def test_every_mode_becomes_rgb(tmp_path, mode, suffix):
    path = tmp_path / f"image-{mode.replace(';', '')}.{suffix}"
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 10, 3), dtype=np.uint8))
    sixteen_bit = {"I;16": np.uint16, "I;16B": ">u2", "I": np.int32}
    if mode in sixteen_bit:
        image = Image.fromarray(np.full((8, 10), 40000, dtype=sixteen_bit[mode]))
    else:
        image = base.convert(mode)
    image.save(path)
    assert Image.open(path).mode == mode
    assert image_problem(str(path)) is None  # the preflight passes exactly what the loader can convert
    rgb = open_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (10, 8)
    if mode in sixteen_bit:
        assert rgb.getpixel((0, 0)) == (156, 156, 156)  # 40000 / 256


def test_a_decompression_bomb_is_listed_not_decoded(images, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # the 40x48 test photos are then over twice the limit
    rows = read_images(images, "image", "label", None, "skip")
    with pytest.raises(DataError, match=r"none of the 24 images can be read .*too large \(Image size \(\d+ pixels\) "
                                        r"exceeds limit"):
        check_images(rows, "image", "skip")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1100)  # 40x48 .. 51x48: only the larger ones are over twice
    kept, bad = check_images(rows, "image", "skip")
    assert kept.skipped == len(bad) > 0 and all(p["problem"].startswith("too large") for p in bad)
    assert all(open_rgb(p).size[0] * open_rgb(p).size[1] <= 2200 for p in kept.inputs["image"])


def test_transparent_pixels_become_white(tmp_path):
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert open_rgb(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert open_rgb(tmp_path / "phone.jpg").size == (10, 20)


def test_dataset_items(images):
    rows = read_images(images, "image", "label", None, "skip")
    data = ImageDataset(rows.inputs["image"], [0] * len(rows), transform=lambda im: np.asarray(im).shape)
    item = data[3]
    assert item["labels"] == 0 and item["index"] == 3 and "epoch" not in item
    assert data.preferred_workers >= 0
