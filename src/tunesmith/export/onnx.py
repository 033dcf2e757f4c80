"""ONNX export: a fine-tuned model as one `.onnx` file, checked against PyTorch on real inputs.

The model is traced through the task's own `forward` (so preprocessing tensors go in, the task's
outputs come out) with torch's dynamo exporter. The batch dimension is dynamic, and so is the
sequence dimension of token inputs (2-D integer tensors: ids, masks, token types) and the time
dimension of frame inputs (3-D float tensors: Whisper's cropped log-mel frames, with each clip's
frame count beside them), so one file serves texts and clips of any length; a task whose inputs vary
otherwise names the axes in `dynamic_axes` (segmentation: the height and width of whole images). The file is then run
with onnxruntime on every batch of the given data, plus the first batch padded a little longer
(so a sequence axis that was fixed by the trace is caught even when every batch has the same
length), and compared with PyTorch's outputs:
the largest absolute difference and the share of rows whose top class agrees are returned, and
an export whose outputs differ by more than `atol` is an error. The file is written under a
temporary name and moved into place only once it passes, so a failed export leaves nothing
behind (and an earlier good file at `output` is kept). Tasks that generate text (their `forward`
runs `generate`, a loop one graph of this kind does not hold) are refused with what to use instead.
Needs the `onnx` extra (`pip install 'tunesmith[onnx]'`: onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tunesmith.errors import ExportError

if TYPE_CHECKING:
    from tunesmith.tasks import Task

SKIPPED_KEYS = ("labels", "targets")


class _TaskForward(nn.Module):
    """`task.forward(model, batch)` as a module whose positional inputs are the batch tensors."""

    def __init__(self, task: Task, model: nn.Module, names: list[str]):
        super().__init__()
        self.task, self.model, self.names = task, model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.task.forward(self.model, dict(zip(self.names, tensors)))


def export_and_check(task: Task, model: nn.Module, loader: DataLoader, output: Path, atol: float = 1e-3) -> dict[str, Any]:
    """Writes `output` and compares onnxruntime with PyTorch on every batch of `loader`.

    Returns:
        `path`, `rows` compared, `max_abs_diff` of the outputs, `top1_agreement` (share of rows).

    Raises:
        ExportError: the onnx packages are missing, `output` cannot be written, the export fails,
            onnxruntime cannot run it, or outputs differ by more than `atol`. No file is left behind.
    """
    missing = [p for p in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(p) is None]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: pip install 'tunesmith[onnx]'")
    refusal = getattr(model, "onnx_refusal", None)  # a model that is no PyTorch graph says what to use instead
    if refusal:
        raise ExportError(refusal)
    model = model.eval()
    first = next(iter(loader))
    names = [k for k in first if k not in SKIPPED_KEYS]
    with torch.no_grad():
        if not isinstance(task.forward(model, first), torch.Tensor):
            raise ExportError(f"the {task.name} task generates its outputs (a decoding loop), which this export does not "
                              "write as one graph; export best/ with Hugging Face Optimum (optimum-cli export onnx "
                              "--model runs/x/best out/), which splits it into encoder and decoder graphs")
    partial = _partial_path(output)
    try:
        _export(_TaskForward(task, model, names).eval(), first, names, partial, getattr(task, "dynamic_axes", {}))
        report = _compare(task, model, loader, first, names, partial, output)
        if report["max_abs_diff"] > atol:
            raise ExportError(f"{output}: ONNX outputs differ from PyTorch by up to {report['max_abs_diff']:.2e} on "
                              f"{report['rows']} rows (more than {atol:.0e}); the file was not written")
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)  # a failed or mismatching export leaves no file
    return {"path": str(output), **report}


def _partial_path(output: Path) -> Path:
    """A temporary name beside `output`, its folder created and checked writable before any tracing."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the folder for {output}: {exc.strerror}; choose another --output") from None
    if output.is_dir():
        raise ExportError(f"{output} is a directory; give a file name such as {output / 'model.onnx'}")
    if not os.access(output.parent, os.W_OK):
        raise ExportError(f"{output.parent} is not writable; choose another --output")
    return output.with_name(f".{output.name}.partial")


def _dynamic_shapes(first: dict[str, torch.Tensor], names: list[str],
                    declared: dict[str, tuple[int, ...]]) -> tuple[tuple[dict[int, Any], ...]]:
    """Batch axis dynamic everywhere; axis 1 of token inputs and axis 2 of frame inputs too, unless the
    task declares an input's varying axes itself (`declared`, the task's optional `dynamic_axes`)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    sequence = torch.export.Dim.DYNAMIC  # the exporter finds the range (e.g. up to the position embeddings)
    shapes = []
    for name in names:
        axis = _length_axis(first[name])
        axes = declared.get(name, () if axis is None else (axis,))
        shapes.append({0: batch, **{a: sequence for a in axes}})
    return (tuple(shapes),)  # one entry: the *tensors of forward


def _export(module: nn.Module, first: dict[str, torch.Tensor], names: list[str], path: Path,
            declared: dict[str, tuple[int, ...]]) -> None:
    try:
        with torch.no_grad():
            torch.onnx.export(module, tuple(first[k] for k in names), str(path), input_names=names,
                              output_names=["outputs"], dynamo=True, external_data=False,
                              dynamic_shapes=_dynamic_shapes(first, names, declared), verbose=False)
    except Exception as exc:  # noqa: BLE001 - exporter failures come in many types
        text = str(exc).strip()
        raise ExportError(f"ONNX export failed: {text.splitlines()[0] if text else type(exc).__name__}; "
                          "no file was written") from None


def _length_axis(tensor: torch.Tensor) -> int | None:
    """The axis whose length varies by batch: 1 of (B, T) integer inputs (token ids, attention masks,
    token types), 2 of (B, C, T) float inputs (frames: cropped log-mel features); None otherwise."""
    if tensor.dim() == 2 and not tensor.dtype.is_floating_point:
        return 1
    if tensor.dim() == 3 and tensor.dtype.is_floating_point:
        return 2
    return None


def _longer(batch: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor] | None:
    """The batch with zeros after the end of its length axes (padding: mask 0, silence past each
    clip's frame count), one token or two frames, to probe that axis with a length the trace did
    not see; None when no input has one."""
    grown = {}
    for name, value in batch.items():
        axis = _length_axis(value) if name in names else None
        if axis is not None:
            shape = list(value.shape)
            shape[axis] = 1 if axis == 1 else 2  # a token; two frames (Whisper's stride-2 convolution halves them)
            value = torch.cat([value, value.new_zeros(shape)], dim=axis)
            grown[name] = value
    return {**batch, **grown} if grown else None


def _compare(task: Task, model: nn.Module, loader: DataLoader, first: dict[str, torch.Tensor], names: list[str],
             path: Path, output: Path) -> dict[str, Any]:
    """Largest |ONNX - PyTorch| over every batch and the longer probe; top-1 agreement over the rows."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst, agree, rows = 0.0, 0.0, 0
    with torch.no_grad():
        for batch in loader:
            expected, got = _both(task, model, session, batch, names, output)
            worst = max(worst, float(np.abs(got - expected).max()))
            agree += _agreeing(got, expected)
            rows += len(expected)
        longer = _longer(first, [n for n in names if n not in getattr(task, "dynamic_axes", {})])
        if longer is not None:  # not counted as rows: it repeats the first batch
            expected, got = _both(task, model, session, longer, names, output)
            worst = max(worst, float(np.abs(got - expected).max()))
    return {"rows": rows, "max_abs_diff": worst, "top1_agreement": agree / max(rows, 1)}


def _agreeing(got: np.ndarray, expected: np.ndarray) -> float:
    """Outputs whose top class agrees (the last axis holds the classes); for (B, K, H, W) class maps,
    the classes are axis 1 and each image counts its share of agreeing pixels."""
    if expected.ndim == 4:
        return float((got.argmax(1) == expected.argmax(1)).reshape(len(expected), -1).mean(1).sum())
    return float((got.argmax(-1) == expected.argmax(-1)).sum())


def _both(task: Task, model: nn.Module, session: Any, batch: dict[str, torch.Tensor], names: list[str],
          output: Path) -> tuple[np.ndarray, np.ndarray]:
    """(PyTorch outputs, onnxruntime outputs) for one batch."""
    expected = task.forward(model, batch).float().cpu().numpy()
    feed = {k: batch[k].cpu().numpy() for k in names}
    try:
        return expected, session.run(None, feed)[0]
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        shape = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feed.items())
        raise ExportError(f"{output}: onnxruntime cannot run the export on a batch of {shape}: "
                          f"{str(exc).strip().splitlines()[0]}; the file was not written") from None
