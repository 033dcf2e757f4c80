"""report.html in every run: the sections, valid embedded PNGs, nothing fetched, and a real browser render."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

import tunesmith
from tunesmith.config import load_config
from tunesmith.report.run_report import write_run_report

SECTIONS = ["run", "results", "overfitting", "curves", "confusion-matrix", "worst-examples", "per-class"]
PLOTS = ["loss", "metrics", "learning_rates", "trainable_groups", "confusion_matrix", "reliability"]


@pytest.fixture(scope="module")
def run(tiny_bert, reviews, tmp_path_factory) -> tunesmith.RunResult:
    """Three epochs with gradual unfreezing and per-group rates, so every curve has something to show."""
    return tunesmith.finetune({
        "output_dir": str(tmp_path_factory.mktemp("report") / "run"),
        "model": {"source": str(tiny_bert)},
        "data": {"train": str(reviews), "max_train_samples": 64, "max_eval_samples": 24, "max_length": 32},
        "training": {"num_train_epochs": 3, "per_device_train_batch_size": 16, "learning_rate": 1e-3,
                     "logging_steps": 1, "early_stopping_patience": None},
        "strategy": {"gradual_unfreezing": True, "layer_lr_decay": 0.5},
    }, quiet=True)


class Parsed(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.ids, self.images, self.tags, self.links = [], [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self.ids.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_report_has_the_expected_sections(run):
    assert run.report == run.run_dir / "report.html"
    text = run.report.read_text()
    assert Parsed(text).ids == SECTIONS
    for heading in ("The run", "Before and after fine-tuning", "Overfitting watch", "Curves", "Confusion matrix",
                    "Worst-predicted validation examples", "Per class"):
        assert f"<h2>{heading}</h2>" in text
    assert "<td>accuracy</td>" in text  # the before/after table
    assert "full config (config.yaml)" in text and "gradual_unfreezing: true" in text


def test_embedded_images_are_valid_pngs_and_match_the_plot_files(run):
    images = [src for src in Parsed(run.report.read_text()).images if src.startswith("data:image/png")]
    assert len(images) == len(PLOTS)
    files = {p.stem: p.read_bytes() for p in (run.run_dir / "plots").glob("*.png")}
    assert sorted(files) == sorted(PLOTS)
    for src in images:
        data = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        assert data in files.values()
        with Image.open(io.BytesIO(data)) as picture:
            picture.verify()
        with Image.open(io.BytesIO(data)) as picture:
            assert picture.format == "PNG" and picture.width > 300 and picture.height > 150


def test_report_is_self_contained(run):
    text = run.report.read_text()
    parsed = Parsed(text)
    assert "script" not in parsed.tags and "link" not in parsed.tags
    assert all(src.startswith("data:") for src in parsed.images)
    assert all(href.startswith("#") for href in parsed.links)
    assert not re.search(r"(src|href)=\"(https?:|//)", text)


def test_train_records_carry_the_rate_of_every_layer_group(run):
    train = [r for r in records(run.run_dir) if r["phase"] == "train"]
    assert list(train[-1]["lrs"]) == ["embeddings", "block.0", "block.1", "head"]
    rates = train[2]["lrs"]
    assert rates["head"] == pytest.approx(train[2]["lr"])
    assert rates["block.1"] == pytest.approx(rates["head"] * 0.5) and rates["embeddings"] == pytest.approx(rates["head"] / 8)


def test_eval_records_count_the_trainable_parameters(run):
    evals = [r for r in records(run.run_dir) if r["phase"] == "eval"]
    counts = [r["trainable_params"] for r in evals]
    assert counts[0] < counts[1] < counts[2]  # gradual unfreezing adds one group per epoch


def test_validation_predictions_are_saved_for_the_worst_examples(run):
    rows = [json.loads(line) for line in (run.run_dir / "predictions_validation.jsonl").read_text().splitlines()]
    assert len(rows) == 24
    assert set(rows[0]) >= {"line", "true_label", "predicted_label", "score", "prob_negative", "prob_positive", "text"}
    worst = min(rows, key=lambda r: r[f"prob_{r['true_label']}"])
    section = run.report.read_text().split('id="worst-examples"')[1].split("</section>")[0]
    assert f"<td>{worst['line']}</td>" in section


def test_the_overfitting_warning_is_shown(run, tmp_path):
    shutil.copytree(run.run_dir, tmp_path / "copy", ignore=shutil.ignore_patterns("best", "checkpoints"))
    config = load_config(run.run_dir / "config.yaml")
    path = write_run_report(tmp_path / "copy", config, {}, "overfitting: after epoch 2 the gap widened")
    assert '<p class="warn">overfitting: after epoch 2 the gap widened</p>' in path.read_text()


def chromium() -> str | None:
    candidates = [os.environ.get("TUNESMITH_CHROMIUM"), "chromium", "chromium-browser", "google-chrome",
                  "google-chrome-stable"]
    return next((shutil.which(c) for c in candidates if c and shutil.which(c)), None)


def test_report_renders_in_headless_chromium(run, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("headless Chromium not found; install it with: apt-get install -y chromium (see docs/compare.md)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    url = run.report.resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    assert Parsed(dom).ids == SECTIONS and dom.count("data:image/png;base64,") == len(PLOTS)
    shot = tmp_path / "report.png"
    subprocess.run([*flags, "--hide-scrollbars", "--window-size=1200,3000", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)
    with Image.open(shot) as picture:
        colors = picture.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colors is None or len(colors) > 50  # text, tables and plots drawn, not a blank page


def test_the_small_validation_warning_is_shown(run, tmp_path):
    shutil.copytree(run.run_dir, tmp_path / "copy", ignore=shutil.ignore_patterns("best", "checkpoints"))
    data = json.loads((tmp_path / "copy" / "data.json").read_text())
    data["validation"].update(rows=6, label_counts={"a": 3, "b": 3})
    (tmp_path / "copy" / "data.json").write_text(json.dumps(data))
    text = write_run_report(tmp_path / "copy", load_config(run.run_dir / "config.yaml"), {}, None).read_text()
    assert '<p class="warn">small validation split: 6 rows, 3 of class' in text


def test_settings_read_as_yaml(run):
    text = (run.run_dir / "report.html").read_text()
    assert "gradual unfreezing: true" in text and "early stopping patience null" in text
    assert "True" not in text.split("<details>")[0] and "None" not in text.split("<details>")[0]


def test_image_rows_show_the_path_inside_the_data_folder(tmp_path):
    from PIL import Image

    from tunesmith.report.run_report import _worst_section

    records = []
    for i, label in enumerate(("ants", "bees")):
        (tmp_path / "val" / label).mkdir(parents=True)
        Image.new("RGB", (8, 8), (200 * i, 0, 0)).save(tmp_path / "val" / label / "0.png")
        records.append({"line": i + 1, "true_label": label, "image": str(tmp_path / "val" / label / "0.png"),
                        "predicted_label": "ants", "score": 0.6, "prob_ants": 0.6, "prob_bees": 0.4})
    path = tmp_path / "predictions_validation.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    html = _worst_section(path)
    assert "<small>ants/0.png</small>" in html and "<small>bees/0.png</small>" in html
