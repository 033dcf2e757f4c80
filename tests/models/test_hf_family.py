"""The Hugging Face adapter refuses weights that do not fit, instead of training from random weights."""

from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file, save_file

from tunesmith.config import load_config
from tunesmith.errors import ModelSourceError
from tunesmith.tasks import get_task


def task_on(folder, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("text,label\n" + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(10)), encoding="utf-8")
    task = get_task(load_config({"model": {"source": str(folder)}, "data": {"train": str(rows)}}))
    task.preflight()
    return task


def copy_with_weights(tiny_bert, tmp_path, weights: dict) -> str:
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_renamed_keys_are_refused_with_the_counts(tiny_bert, tmp_path):
    renamed = {f"other.{k}": v.contiguous() for k, v in load_file(str(tiny_bert / "model.safetensors")).items()}
    task = task_on(copy_with_weights(tiny_bert, tmp_path, renamed), tmp_path)
    with pytest.raises(ModelSourceError, match=r"tensors are missing from the file .* tensors in the file are "
                                               r"unexpected\. It would train from random weights") as err:
        task.build_model()
    assert f"{len(renamed)} tensors in the file are unexpected" in str(err.value)


def test_a_weights_file_without_tensors_is_refused(tiny_bert, tmp_path):
    task = task_on(copy_with_weights(tiny_bert, tmp_path, {}), tmp_path)
    with pytest.raises(ModelSourceError, match="would train from random weights|cannot load the model"):
        task.build_model()


def test_from_scratch_on_purpose_still_builds(tiny_bert, tmp_path):
    task = task_on(copy_with_weights(tiny_bert, tmp_path, {}), tmp_path)
    task.config.model.pretrained = False
    assert task.build_model().num_labels == 2


def test_a_new_head_on_a_real_encoder_is_accepted(tiny_bert, tmp_path):
    model = task_on(tiny_bert, tmp_path).build_model()
    assert model.config.id2label == {0: "a", 1: "b"}
