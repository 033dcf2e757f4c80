"""torchvision detectors: Faster R-CNN on a pre-trained trunk or a whole torchvision model, groups, `best/`.

`model.source` for object detection is one of:
- `demo:mobilenet-v2` (torchvision's ImageNet MobileNetV2 file) or a classifier's weights file with
  `model.architecture` (`mobilenet_v2`, `resnet50`, ...): its feature layers at strides 8, 16 and 32
  under torchvision's feature pyramid (`BackboneWithFPN`), and a new Faster R-CNN (region proposals,
  RoI-aligned box head) for the user's classes. The trunk's BatchNorm is torchvision's frozen one,
  as in every torchvision detector: detection batches are too small for batch statistics;
- `torchvision:fasterrcnn_<...>` or `torchvision:fasterrcnn_<...>:<WEIGHTS>`, a whole torchvision
  Faster R-CNN (its COCO weights download on a machine with internet), whose box predictor is
  replaced for the user's classes;
- a tunesmith run directory or its `best/` folder.
Layer groups: the trunk's stages cut by stride (`models/torchvision_trunks.py`), then `fpn`, `rpn`
and the RoI box head as `head`. `best/` holds `model.safetensors` and `config.json`, the builder call
that recreates the module, which the model card shows in plain torchvision.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.errors import ModelSourceError
from tunesmith.models.layer_groups import LayerGroup
from tunesmith.models.torchvision_trunks import (
    IMAGENET, group, load_trunk_weights, stride_groups, strides_and_widths, torchvision_builder, trunk_body,
    trunk_weights, untrained_classifier)

log = logging.getLogger("tunesmith")

FPN_CHANNELS = 128  # the pyramid's width: torchvision's MobileNet detectors use 256; 128 halves the box head on a CPU


def create_detector(source: str, num_classes: int, architecture: str | None, sizes: dict[str, int],
                    pretrained: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """The detector `source` names with a new `num_classes` (background included) box predictor, and its spec.

    `sizes`: `min_size`, `max_size` (torchvision's resize of every image) and `max_detections` per image.

    Raises:
        ModelSourceError: an unknown builder, weights name or trunk, or a weights file that does not fit.
    """
    trunk = trunk_weights(source, architecture, pretrained, "object-detection")
    if trunk is not None:
        spec = trunk_spec(trunk[0], num_classes, sizes)
        return _with_trunk_weights(spec, trunk[1], source), spec
    if source.startswith("torchvision:"):
        return _torchvision_detector(source, num_classes, sizes, pretrained)
    raise ModelSourceError(f"object detection cannot use model.source {source!r}: give demo:mobilenet-v2, "
                           "torchvision:fasterrcnn_<...> (e.g. torchvision:fasterrcnn_mobilenet_v3_large_fpn), a "
                           "classifier's weights file with model.architecture, or a fine-tuned run's best/ folder")


def trunk_spec(architecture: str, num_classes: int, sizes: dict[str, int]) -> dict[str, Any]:
    """The spec of a Faster R-CNN on a classifier's trunk: the layers the pyramid reads (the last of
    strides 8, 16 and 32) and their widths; anchors twice each level's stride, plus the pooled level."""
    body, children = trunk_body(untrained_classifier(architecture))
    strides, widths = strides_and_widths(children)
    names = [n for n, _ in children]
    picked = [max(i for i, s in enumerate(strides) if s == want) for want in (8, 16, 32) if want in strides]
    return {"detector": "fasterrcnn", "trunk": architecture, "body": body,
            "return_layers": {names[i]: str(k) for k, i in enumerate(picked)},
            "in_channels": [widths[i] for i in picked], "anchor_sizes": [16 * 2 ** k for k in range(len(picked) + 1)],
            "num_classes": num_classes, **sizes, **IMAGENET}


def build(spec: dict[str, Any]) -> nn.Module:
    """The module a spec describes, with untrained weights (the same call the model card shows)."""
    from torchvision import models
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.misc import FrozenBatchNorm2d

    sizes = {"min_size": spec["min_size"], "max_size": spec["max_size"], "box_detections_per_img": spec["max_detections"]}
    if "builder" in spec:
        model = models.get_model(spec["builder"], weights=None, weights_backbone=None, num_classes=spec["num_classes"],
                                 **sizes)
        return model
    trunk = untrained_classifier(spec["trunk"], norm_layer=FrozenBatchNorm2d)
    body = trunk.get_submodule(spec["body"]) if spec["body"] else trunk
    backbone = BackboneWithFPN(body, spec["return_layers"], spec["in_channels"], FPN_CHANNELS)
    levels = [str(k) for k in range(len(spec["in_channels"]))]
    anchors = AnchorGenerator(tuple((s,) for s in spec["anchor_sizes"]), ((0.5, 1.0, 2.0),) * len(spec["anchor_sizes"]))
    return FasterRCNN(backbone, spec["num_classes"], rpn_anchor_generator=anchors,
                      box_roi_pool=MultiScaleRoIAlign(levels, 7, 2), image_mean=spec["mean"], image_std=spec["std"],
                      **sizes)


def _with_trunk_weights(spec: dict[str, Any], weights: Path | None, source: str) -> nn.Module:
    model = build(spec)
    if weights is not None:
        prefix = f"{spec['body']}." if spec["body"] else ""
        count = load_trunk_weights(model.get_submodule("backbone.body"), weights, prefix, spec["trunk"], source)
        log.info("%s: %s trunk loaded (%d tensors), new Faster R-CNN for %d classes", source, spec["trunk"], count,
                 spec["num_classes"] - 1)
    return model


def _torchvision_detector(source: str, num_classes: int, sizes: dict[str, int],
                          pretrained: bool) -> tuple[nn.Module, dict[str, Any]]:
    from torchvision.models import detection
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    builder, model = torchvision_builder(source, detection, "fasterrcnn", pretrained, min_size=sizes["min_size"],
                                         max_size=sizes["max_size"], box_detections_per_img=sizes["max_detections"])
    heads, score = model.get_submodule("roi_heads"), model.get_submodule("roi_heads.box_predictor.cls_score")
    heads.box_predictor = FastRCNNPredictor(score.in_features, num_classes)
    return model, {"builder": builder, "num_classes": num_classes, **sizes, **IMAGENET}


def detection_layer_groups(model: nn.Module) -> list[LayerGroup]:
    """[stem, stage.0 ... stage.n, fpn, rpn, head]: the trunk cut by stride, the pyramid, the region
    proposals, and the RoI box head."""
    body = model.get_submodule("backbone.body")
    return [*stride_groups(body, "backbone.body."),
            group("fpn", [("backbone.fpn", model.get_submodule("backbone.fpn"))]),
            group("rpn", [("rpn", model.get_submodule("rpn"))]),
            group("head", [("roi_heads", model.get_submodule("roi_heads"))])]


def builder_code(spec: dict[str, Any]) -> str:
    """Plain torchvision code that recreates the saved module, for the model card."""
    sizes = f"min_size={spec['min_size']}, max_size={spec['max_size']}, box_detections_per_img={spec['max_detections']}"
    if "builder" in spec:
        return (f"from torchvision.models import get_model\nmodel = get_model({spec['builder']!r}, weights=None, "
                f"weights_backbone=None, num_classes={spec['num_classes']}, {sizes})")
    trunk = f"{spec['trunk']}(norm_layer=FrozenBatchNorm2d)" + (f".{spec['body']}" if spec["body"] else "")
    levels = [str(k) for k in range(len(spec["in_channels"]))]
    anchors = tuple((s,) for s in spec["anchor_sizes"])
    return "\n".join([
        f"from torchvision.models import {spec['trunk']}",
        "from torchvision.models.detection import FasterRCNN",
        "from torchvision.models.detection.anchor_utils import AnchorGenerator",
        "from torchvision.models.detection.backbone_utils import BackboneWithFPN",
        "from torchvision.ops import MultiScaleRoIAlign",
        "from torchvision.ops.misc import FrozenBatchNorm2d",
        f"backbone = BackboneWithFPN({trunk}, {spec['return_layers']!r}, {spec['in_channels']}, {FPN_CHANNELS})",
        f"anchors = AnchorGenerator({anchors!r}, {((0.5, 1.0, 2.0),) * len(anchors)!r})",
        f"model = FasterRCNN(backbone, {spec['num_classes']}, rpn_anchor_generator=anchors, "
        f"box_roi_pool=MultiScaleRoIAlign({levels!r}, 7, 2), image_mean={spec['mean']}, image_std={spec['std']}, {sizes})",
    ])
