"""dlib's face ResNet read from its .dat file: dlib's own descriptors on real faces, verification before
any training, the reader's errors, and the timm round trip (demo, layer groups, local-dir folder)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from tunesmith.errors import ModelSourceError
from tunesmith.models.dlib_resnet import CHIP, read_dlib_weights
from tunesmith.models.timm_models import create_timm_model, load_timm, save_timm, timm_layer_groups
from tunesmith.report.ranking_metrics import verification_metrics

face_models = pytest.importorskip("face_recognition_models", reason="pip install -e '.[faces]'")
DAT = face_models.face_recognition_model_location()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return create_timm_model("demo:face-resnet", 0, task="embedding").eval()


def chips(paths) -> tuple[np.ndarray, torch.Tensor]:
    """(N, 150, 150, 3) uint8 chips of grayscale photos, and the same as the model's normalized input."""
    from PIL import Image

    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((CHIP, CHIP), Image.BILINEAR)) for p in paths])
    pixels = torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2)
    mean = torch.tensor((122.782, 117.001, 104.298))[:, None, None]
    return images, (pixels - mean) / 256  # dlib's input layer: (pixel - mean) / 256


def test_the_port_gives_dlibs_own_descriptors_on_real_faces(model, shared_data):
    dlib = pytest.importorskip("dlib", reason="dlib-bin (in .[dev]) is the reference")
    faces = shared_data / "orl_faces" / "images"
    images, pixels = chips([faces / f"s{k}" / f"{n}.png" for k, n in ((31, 1), (31, 2), (35, 7), (40, 10))])
    reference = dlib.face_recognition_model_v1(DAT)
    expected = np.stack([np.array(reference.compute_face_descriptor(image)) for image in images])
    with torch.no_grad():
        got = model(pixels).double().numpy()
    # Measured: at most 3.1e-7 apart (float32 rounding) on descriptors of norm about 1.4.
    assert np.abs(got - expected).max() < 2e-6


def test_before_training_the_converted_model_tells_people_apart(model, shared_data):
    """The 900 ORL test pairs (450 same person): cosine similarity of the pre-trained embeddings."""
    orl = shared_data / "orl_faces"
    with open(orl / "pairs_test.csv", encoding="utf-8") as f:
        pairs = list(csv.DictReader(f))
    paths = sorted({p[k] for p in pairs for k in ("path_a", "path_b")})
    _, pixels = chips([orl / p for p in paths])
    with torch.no_grad():
        vectors = torch.nn.functional.normalize(model(pixels), dim=-1).numpy()
    at = {p: i for i, p in enumerate(paths)}
    scores = np.array([vectors[at[p["path_a"]]] @ vectors[at[p["path_b"]]] for p in pairs])
    metrics = verification_metrics(scores, np.array([int(p["same"]) for p in pairs]))
    # Measured: ROC AUC 0.931, EER 0.158 on plain resized photos (no alignment); chance is 0.5.
    assert metrics["roc_auc"] > 0.88


def test_a_damaged_or_foreign_file_is_refused_by_name(tmp_path):
    whole = open(DAT, "rb").read()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelSourceError, match="cut.dat"):
        read_dlib_weights(cut)
    other = tmp_path / "landmarks.dat"
    other.write_bytes(open(face_models.pose_predictor_five_point_model_location(), "rb").read()[:4096])
    with pytest.raises(ModelSourceError, match="landmarks.dat: not a dlib face ResNet"):
        read_dlib_weights(other)


def test_the_face_model_is_a_timm_model_with_layer_groups_and_a_local_dir_folder(model, tmp_path):
    groups = timm_layer_groups(model)
    assert [g.name for g in groups] == ["stem"] + [f"stage.{i}" for i in range(5)] + ["neck"]
    assert {n for n, _ in groups[-1].params} == {"embedding.weight"}
    assert sum(p.numel() for p in model.parameters()) == 5_614_592  # every value the .dat file holds
    save_timm(model, tmp_path / "best", [], None)
    loaded, _ = load_timm(tmp_path / "best")
    pixels = torch.randn(2, 3, CHIP, CHIP)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(pixels), model(pixels), atol=1e-6)
    classifier = create_timm_model("demo:face-resnet", 5)  # image-classification: a new, zeroed head
    assert classifier(pixels).abs().max() == 0
