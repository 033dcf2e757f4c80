"""Key maps: rename the tensors of a weights file so they load into a named timm architecture.

A weights file written by another codebase names the same tensors differently (lukemelas'
EfficientNet-PyTorch says `_blocks.3._depthwise_conv.weight` where timm says
`blocks.1.1.conv_dw.weight`). A key map is a function registered here with
`@register_key_map(name, detect)`; the first whose `detect` accepts the file's keys is used, and
files already in timm's naming pass through unchanged. `check_mapping` then compares the mapped
tensors with the model and refuses a partial load: every missing, unexpected or mis-shaped key
is reported by name, and only a replaced classifier may be absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from tunesmith.errors import ModelSourceError

StateDict = dict[str, torch.Tensor]
KeyMapFn = Callable[[StateDict, nn.Module], StateDict]


@dataclass(frozen=True)
class KeyMap:
    name: str
    detect: Callable[[list[str]], bool]
    apply: KeyMapFn


_KEY_MAPS: list[KeyMap] = []


def register_key_map(name: str, detect: Callable[[list[str]], bool]) -> Callable[[KeyMapFn], KeyMapFn]:
    """Registers a key map used for weights files whose key list `detect` accepts."""

    def wrap(fn: KeyMapFn) -> KeyMapFn:
        _KEY_MAPS.append(KeyMap(name, detect, fn))
        return fn

    return wrap


@dataclass
class KeyMapReport:
    """What mapping a weights file onto a model found. `state` holds the tensors to load."""

    key_map: str
    state: StateDict
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    dropped_head: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        return (f"{len(self.state)} tensors mapped with key map {self.key_map!r}; {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, {len(self.mismatched)} mis-shaped"
                + (f"; classifier {', '.join(self.dropped_head)} replaced by a new head" if self.dropped_head else ""))


def map_state_dict(state: StateDict, model: nn.Module, head_keys: set[str]) -> KeyMapReport:
    """Renames `state` for `model` and checks it; the classifier (`head_keys`) may differ in size.

    Raises:
        ModelSourceError: the mapped weights do not cover the model exactly (missing, unexpected
            or mis-shaped keys, each named) - a silent partial load is never done.
    """
    state = _unwrap(state)
    keys = list(state)
    chosen = next((m for m in _KEY_MAPS if m.detect(keys)), None)
    mapped = chosen.apply(state, model) if chosen else _strip_prefixes(state, model)
    report = check_mapping(mapped, model, head_keys, chosen.name if chosen else "identity")
    return report


def check_mapping(mapped: StateDict, model: nn.Module, head_keys: set[str], key_map: str) -> KeyMapReport:
    """Compares mapped tensors with the model's own; a classifier of another size is dropped."""
    target = model.state_dict()
    report = KeyMapReport(key_map, {})
    for key, tensor in mapped.items():
        if key not in target:
            report.unexpected.append(key)
        elif tuple(tensor.shape) != tuple(target[key].shape):
            if key in head_keys:
                report.dropped_head.append(key)
            else:
                report.mismatched.append((key, tuple(tensor.shape), tuple(target[key].shape)))
        else:
            report.state[key] = tensor
    report.missing = [k for k in target if k not in mapped and k not in head_keys]
    report.dropped_head += [k for k in head_keys if k in target and k not in mapped]
    return report


def refuse_partial(report: KeyMapReport, source: str, architecture: str) -> None:
    """Raises ModelSourceError naming every problem of an inexact mapping."""
    if report.ok:
        return

    def listed(items: list) -> str:
        shown = ", ".join(str(i) for i in items[:8])
        return shown + (f" ... ({len(items)} in all)" if len(items) > 8 else "")

    parts = []
    if report.missing:
        parts.append(f"missing in the file: {listed(report.missing)}")
    if report.unexpected:
        parts.append(f"not in {architecture}: {listed(report.unexpected)}")
    if report.mismatched:
        parts.append("wrong shape: " + listed([f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in report.mismatched]))
    raise ModelSourceError(
        f"{source} does not fit timm's {architecture!r} (key map {report.key_map!r}): {'; '.join(parts)}. "
        "Check model.architecture names the network the file was trained as; for another naming scheme add a "
        "key map in tunesmith/models/key_maps.py")


def _unwrap(state: dict) -> StateDict:
    # Training scripts often save {"state_dict": ...} or {"model": ...} around the tensors.
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(state.get(key), dict):
            return _unwrap(state[key])
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _strip_prefixes(state: StateDict, model: nn.Module) -> StateDict:
    """Identity map, minus wrapper prefixes that DDP or Lightning add (`module.`, `model.`)."""
    target = model.state_dict()
    for prefix in ("module.", "model.", "backbone."):
        if not any(k in target for k in state) and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


# ---- lukemelas/EfficientNet-PyTorch (and its Lite forks) -> timm efficientnet_* -------------

_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block: names differ by whether the block expands channels first (timm InvertedResidual)
# or not (timm DepthwiseSeparableConv, the first block of the network).
_EFFNET_EXPANDING = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                     "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
                     "_bn2": "bn3"}
_EFFNET_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                     "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}


@register_key_map("lukemelas-efficientnet", detect=lambda keys: "_conv_stem.weight" in keys)
def lukemelas_efficientnet(state: StateDict, model: nn.Module) -> StateDict:
    """`_blocks.N.*` is one flat list; timm nests blocks in stages (`blocks.stage.block.*`), so the
    flat index is located with the model's own stage lengths."""
    stages = getattr(model, "blocks", None)
    if stages is None:
        raise ModelSourceError(f"the weights are an EfficientNet (lukemelas naming) but {type(model).__name__} "
                               "is not; set model.architecture to a timm efficientnet_* model")
    positions = [(s, b) for s, stage in enumerate(stages) for b in range(len(stage))]
    expanding = {k.split(".")[1] for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    mapped = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and int(parts[1]) < len(positions):
            stage, block = positions[int(parts[1])]
            table = _EFFNET_EXPANDING if parts[1] in expanding else _EFFNET_DEPTHWISE
            name = table.get(parts[2], parts[2])
            mapped[".".join([f"blocks.{stage}.{block}", name, *parts[3:]])] = tensor
        else:
            # unknown names (or blocks beyond the model's) pass through and are reported as unexpected
            mapped[".".join([_EFFNET_TOP.get(parts[0], parts[0]), *parts[1:]])] = tensor
    return mapped
