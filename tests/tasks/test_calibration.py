"""Temperature scaling and the calibration metrics of the single-label classifiers (tasks/_calibration.py)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import tunesmith
from tunesmith.tasks._calibration import TemperatureScaling, fit_temperature, sensitivity_thresholds, softmax


def drawn(temperature: float, n: int = 4000, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / temperature): calibrated at that temperature."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, k))
    probs = softmax(logits / temperature)
    y = np.array([rng.choice(k, p=p) for p in probs])
    return logits, y


@pytest.mark.parametrize("true_t", [3.0, 0.5])
def test_the_fitted_temperature_recovers_the_one_the_labels_were_drawn_at(true_t):
    logits, y = drawn(true_t)
    assert fit_temperature(logits, y) == pytest.approx(true_t, rel=0.1)


def test_scaling_an_over_confident_model_lowers_ece_and_log_loss_and_keeps_every_label():
    logits, y = drawn(3.0)  # the raw logits are three times too sure
    scores = TemperatureScaling().scores(logits, y, ["a", "b", "c"], fit=True)
    assert scores["ece_calibrated"] < scores["ece"] / 3
    assert scores["log_loss_calibrated"] < scores["log_loss"]
    assert 0.5 < scores["roc_auc"] <= 1 and set(scores["per_class"]["a"]) >= {"precision", "roc_auc"}
    assert scores["accuracy"] == float((logits.argmax(1) == y).mean())  # scaling never moves the argmax


def test_a_saved_temperature_is_applied_and_never_refitted():
    logits, y = drawn(3.0)
    scaling = TemperatureScaling()
    scaling.saved = {"temperature": 1.0}
    scores = scaling.scores(logits, y, ["a", "b", "c"], fit=True)
    assert scores["temperature"] == 1.0 and scores["ece_calibrated"] == pytest.approx(scores["ece"])
    assert scaling.fitted is None


def test_the_sensitivity_threshold_flags_at_least_the_target_share_of_positives():
    rng = np.random.default_rng(1)
    p, positive = rng.random(500), rng.random(500) < 0.3
    for target, threshold in sensitivity_thresholds(p, positive).items():
        assert (p[positive] >= threshold).mean() >= float(target)
        assert (p[positive] > threshold).mean() < float(target)  # and no higher threshold would do


def test_a_broken_calibration_file_names_itself_and_the_fix(tmp_path):
    (tmp_path / "calibration.json").write_text('{"temperature": -1}')
    with pytest.raises(tunesmith.ModelSourceError, match=r"calibration\.json.*delete it"):
        TemperatureScaling().read(tmp_path)


def test_a_fine_tuned_classifier_saves_its_temperature_and_predict_applies_it(tiny_config, tmp_path):
    result = tunesmith.finetune(tiny_config, quiet=True)
    saved = json.loads((result.run_dir / "best" / "calibration.json").read_text())
    assert saved["temperature"] == pytest.approx(result.final["temperature"]) and saved["positive_label"] == "positive"
    assert set(saved["thresholds"]) == {"0.90", "0.95"}
    assert result.final["log_loss_calibrated"] <= result.final["log_loss"] + 1e-6  # fitted on these rows
    assert "temperature" in (result.run_dir / "best" / "README.md").read_text()

    data = tmp_path / "few.csv"
    data.write_text("text,label\nlovely and warm,positive\ncold and dull,negative\n")
    metrics = tunesmith.evaluate(str(result.run_dir / "best"), str(data))
    assert metrics["temperature"] == saved["temperature"] and "operating_points" in metrics

    def log_odds(path):  # the files hold probabilities; their log-odds are the logit gap over T
        return np.array([np.log(float(r["prob_positive"]) / float(r["prob_negative"])) for r in csv.DictReader(path.open())])

    scaled = log_odds(tunesmith.predict(str(result.run_dir / "best"), str(data), str(tmp_path / "p.csv")))
    (result.run_dir / "best" / "calibration.json").unlink()
    raw = log_odds(tunesmith.predict(str(result.run_dir / "best"), str(data), str(tmp_path / "raw.csv")))
    assert saved["temperature"] != pytest.approx(1.0, abs=0.02)  # else the comparison below would prove nothing
    assert np.allclose(scaled * saved["temperature"], raw, rtol=1e-3, atol=1e-4)


def test_an_image_run_directory_applies_the_temperature_its_best_model_keeps(image_config, color_images, tmp_path):
    """evaluate and predict on a run directory read best/calibration.json, as on best/ itself."""
    result = tunesmith.finetune(image_config | {"training": image_config["training"] | {"num_train_epochs": 1}},
                                quiet=True)
    saved = json.loads((result.run_dir / "best" / "calibration.json").read_text())
    assert tunesmith.evaluate(str(result.run_dir), str(color_images))["temperature"] == saved["temperature"]
    on_run, on_best = (tunesmith.predict(str(where), str(color_images), str(tmp_path / f"{name}.csv"))
                       for name, where in (("run", result.run_dir), ("best", result.run_dir / "best")))
    assert on_run.read_text() == on_best.read_text()
