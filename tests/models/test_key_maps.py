"""Key maps: the shipped EfficientNet-Lite0 weights map completely onto timm, and bad files are refused."""

from __future__ import annotations

import pytest
import timm
import torch

from tunesmith.errors import ModelSourceError
from tunesmith.models.key_maps import map_state_dict, refuse_partial
from tunesmith.models.timm_models import _DEMOS, classifier_keys, read_weights


@pytest.fixture(scope="module")
def lite0_file():
    return _DEMOS["efficientnet-lite0"].weights()


def test_every_key_of_the_demo_weights_maps_with_matching_shapes(lite0_file):
    state = read_weights(lite0_file)
    model = timm.create_model("efficientnet_lite0", pretrained=False)  # 1000 classes, like the file
    report = map_state_dict(state, model, classifier_keys(model))
    assert report.key_map == "lukemelas-efficientnet"
    assert report.ok and not report.dropped_head
    assert len(state) == 296 and sum(k.endswith("num_batches_tracked") for k in state) == 49
    target = model.state_dict()
    assert set(report.state) == set(target)  # every model tensor comes from the file, none left over
    assert all(report.state[k].shape == target[k].shape for k in target)
    # spot checks of the renaming: stages hold 1, 2, 2, 3, 3, 4, 1 blocks, so flat block 4 is the
    # second block of stage 2, an expanding block
    assert torch.equal(report.state["blocks.2.1.conv_dw.weight"], state["_blocks.4._depthwise_conv.weight"])
    assert torch.equal(report.state["blocks.2.1.bn3.running_var"], state["_blocks.4._bn2.running_var"])
    assert torch.equal(report.state["blocks.0.0.conv_pw.weight"], state["_blocks.0._project_conv.weight"])
    assert torch.equal(report.state["bn2.weight"], state["_bn1.weight"])


def test_a_classifier_of_another_size_is_replaced_not_an_error(lite0_file):
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=2)
    report = map_state_dict(read_weights(lite0_file), model, classifier_keys(model))
    assert report.ok and sorted(report.dropped_head) == ["classifier.bias", "classifier.weight"]


def test_wrong_architecture_is_refused_naming_keys(lite0_file):
    model = timm.create_model("efficientnet_b0", pretrained=False)  # has squeeze-excite, Lite0 has none
    report = map_state_dict(read_weights(lite0_file), model, classifier_keys(model))
    assert report.missing and not report.ok
    with pytest.raises(ModelSourceError) as err:
        refuse_partial(report, "lite0.pth", "efficientnet_b0")
    assert "missing in the file: blocks.0.0.se.conv_reduce.weight" in str(err.value)
    assert "model.architecture" in str(err.value)


def test_mis_shaped_and_unexpected_keys_are_named():
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}  # DDP prefix is stripped
    assert map_state_dict(state, model, classifier_keys(model)).ok
    state["module.layer1.0.conv1.weight"] = torch.zeros(1, 2, 3, 3)
    state["module.extra.weight"] = torch.zeros(1)
    report = map_state_dict(state, model, classifier_keys(model))
    with pytest.raises(ModelSourceError) as err:
        refuse_partial(report, "mine.pth", "resnet10t")
    message = str(err.value)
    assert "wrong shape: layer1.0.conv1.weight (1, 2, 3, 3) vs (64, 64, 3, 3)" in message
    assert "not in resnet10t: extra.weight" in message and "missing" not in message


def test_checkpoint_wrappers_are_unwrapped():
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    wrapped = {"epoch": 3, "state_dict": model.state_dict()}
    assert map_state_dict(wrapped, model, classifier_keys(model)).ok
