"""timm models: sources, layer groups for CNNs and ViTs, the demo's ImageNet behaviour, saving."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

from tunesmith.errors import ModelSourceError
from tunesmith.models.timm_models import create_timm_model, load_timm, save_timm, timm_layer_groups


def test_cnn_groups_are_stem_stages_neck_head():
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=3)
    groups = timm_layer_groups(model)
    assert [g.name for g in groups] == ["stem"] + [f"stage.{i}" for i in range(7)] + ["neck", "head"]
    assert {n for n, _ in groups[0].params} == {"conv_stem.weight", "bn1.weight", "bn1.bias"}
    assert {n for n, _ in groups[-1].params} == {"classifier.weight", "classifier.bias"}
    assert all(n.startswith("blocks.3.") for n, _ in groups[4].params)
    names = [n for g in groups for n, _ in g.params]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert groups[4].modules == [model.blocks[3]]  # eval() on it reaches its BatchNorms and drop-path


def test_resnet_and_vit_groups():
    resnet = timm_layer_groups(timm.create_model("resnet10t", pretrained=False, num_classes=2))
    assert [g.name for g in resnet] == ["stem", "stage.0", "stage.1", "stage.2", "stage.3", "head"]
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, depth=2)
    groups = timm_layer_groups(vit)
    assert [g.name for g in groups] == ["patch_embed", "block.0", "block.1", "final_norm", "head"]
    assert {n for n, _ in groups[0].params} == {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}


def test_train_batchnorm_lists_the_norm_layers():
    model = timm.create_model("resnet10t", pretrained=False, num_classes=2)
    groups = timm_layer_groups(model, train_batchnorm=True)
    assert all(isinstance(m, torch.nn.BatchNorm2d) for m in groups[1].train_when_frozen)
    assert len(groups[1].train_when_frozen) == 2 and not timm_layer_groups(model)[1].train_when_frozen


def test_demo_builds_with_a_zero_head_and_the_weights_own_preprocessing():
    model = create_timm_model("demo:efficientnet-lite0", num_classes=2)
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and model.num_classes == 2
    assert not model.classifier.weight.any()
    scratch = create_timm_model("demo:efficientnet-lite0", num_classes=2, pretrained=False)
    assert not torch.equal(scratch.conv_stem.weight, model.conv_stem.weight)


def test_source_errors_say_what_to_do(tmp_path):
    with pytest.raises(ModelSourceError, match="did you mean efficientnet_lite0"):
        create_timm_model("efficientnet_lite00", 2)
    with pytest.raises(ModelSourceError, match="unknown demo model 'demo:nope'; available: demo:efficientnet-lite0 \(image\)"):
        create_timm_model("demo:nope", 2)
    weights = tmp_path / "mine.safetensors"
    save_file(timm.create_model("resnet10t", num_classes=2).state_dict(), str(weights))
    with pytest.raises(ModelSourceError, match="set model.architecture"):
        create_timm_model(str(weights), 2)
    with pytest.raises(ModelSourceError, match="does not fit timm's 'resnet18'"):
        create_timm_model(str(weights), 2, architecture="resnet18")
    loaded = create_timm_model(str(weights), 2, architecture="resnet10t")
    assert torch.equal(loaded.fc.weight, load_file_tensor(weights, "fc.weight"))  # same size: head kept
    with pytest.raises(ModelSourceError, match="not a timm image model"):
        create_timm_model(str(tmp_path), 2)
    (tmp_path / "bad.pth").write_bytes(b"not a pickle")
    with pytest.raises(ModelSourceError, match="cannot read weights file"):
        create_timm_model(str(tmp_path / "bad.pth"), 2, architecture="resnet10t")


def load_file_tensor(path, key):
    from safetensors.torch import load_file

    return load_file(str(path))[key]


def test_saved_folder_loads_in_plain_timm(tmp_path):
    model = create_timm_model("efficientnet_lite0", num_classes=3, pretrained=False).eval()
    torch.nn.init.normal_(model.classifier.weight)
    save_timm(model, tmp_path / "best", ["cat", "dog", "owl"])
    config = json.loads((tmp_path / "best" / "config.json").read_text())
    assert config["architecture"] == "efficientnet_lite0" and config["label_names"] == ["cat", "dog", "owl"]
    again, labels = load_timm(tmp_path / "best")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(again.eval()(x), model(x), atol=1e-6)
    assert labels == ["cat", "dog", "owl"]
    script = (
        "import sys, timm, torch\n"
        f"model = timm.create_model('local-dir:{tmp_path / 'best'}', pretrained=True).eval()\n"
        "assert 'tunesmith' not in sys.modules\n"
        "print(model.pretrained_cfg['label_names'], model.num_classes)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['cat', 'dog', 'owl'] 3"


def test_demo_weights_see_bees_as_imagenet_bees(shared_data):
    """The mapping is right if the 1000-class model recognises real photos: most val bees -> 309 'bee'."""
    from timm.data import create_transform, resolve_model_data_config

    from tunesmith.data.images import open_rgb

    model = create_timm_model("demo:efficientnet-lite0", num_classes=1000).eval()
    transform = create_transform(**resolve_model_data_config(model))
    bees = sorted((shared_data / "hymenoptera" / "val" / "bees").glob("*.jpg"))
    ants = sorted((shared_data / "hymenoptera" / "val" / "ants").glob("*.jpg"))
    with torch.no_grad():
        bee_top = model(torch.stack([transform(open_rgb(p)) for p in bees])).argmax(-1)
        ant_top = model(torch.stack([transform(open_rgb(p)) for p in ants])).argmax(-1)
    assert len(bees) == 83 and (bee_top == 309).float().mean() >= 0.75  # measured: 0.81
    assert (ant_top == 310).float().mean() >= 0.7  # 310 'ant', measured: 0.77
    random_init = create_timm_model("demo:efficientnet-lite0", num_classes=1000, pretrained=False).eval()
    with torch.no_grad():
        assert (random_init(torch.stack([transform(open_rgb(p)) for p in bees[:16]])).argmax(-1) == 309).sum() <= 2
