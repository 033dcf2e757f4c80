"""ONNX export: a fine-tuned model as one `.onnx` file, checked against PyTorch on real inputs.

The model is traced through the task's own `forward` (so preprocessing tensors go in, the task's
outputs come out) with torch's dynamo exporter, the batch dimension left dynamic. The file is
then run with onnxruntime on every batch of the given data and compared with PyTorch's outputs:
the largest absolute difference and the share of rows whose top class agrees are returned, and
an export whose outputs differ by more than `atol` is an error. Needs the `onnx` extra
(`pip install 'tunesmith[onnx]'`: onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tunesmith.errors import ExportError

SKIPPED_KEYS = ("labels", "targets")


class _TaskForward(nn.Module):
    """`task.forward(model, batch)` as a module whose positional inputs are the batch tensors."""

    def __init__(self, task: Any, model: nn.Module, names: list[str]):
        super().__init__()
        self.task, self.model, self.names = task, model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.task.forward(self.model, dict(zip(self.names, tensors)))


def export_and_check(task: Any, model: nn.Module, loader: DataLoader, output: Path, atol: float = 1e-3) -> dict[str, Any]:
    """Writes `output` and compares onnxruntime with PyTorch on every batch of `loader`.

    Returns:
        `path`, `rows` compared, `max_abs_diff` of the outputs, `top1_agreement` (share of rows).

    Raises:
        ExportError: the onnx packages are missing, the export fails, or outputs differ by more than `atol`.
    """
    missing = [p for p in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(p) is None]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: pip install 'tunesmith[onnx]'")
    import onnxruntime

    model = model.eval()
    first = next(iter(loader))
    names = [k for k in first if k not in SKIPPED_KEYS]
    batch_dim = torch.export.Dim("batch", min=1, max=4096)
    shapes = (tuple({0: batch_dim} for _ in names),)  # one entry: the *tensors of forward
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad():
            torch.onnx.export(_TaskForward(task, model, names).eval(), tuple(first[k] for k in names), str(output),
                              input_names=names, output_names=["outputs"], dynamo=True, external_data=False,
                              dynamic_shapes=shapes, verbose=False)
    except Exception as exc:  # noqa: BLE001 - exporter failures come in many types
        raise ExportError(f"ONNX export failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}") from None
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    worst, agree, rows = 0.0, 0, 0
    with torch.no_grad():
        for batch in loader:
            expected = task.forward(model, batch).float().cpu().numpy()
            got = session.run(None, {k: batch[k].cpu().numpy() for k in names})[0]
            worst = max(worst, float(np.abs(got - expected).max()))
            agree += int((got.argmax(-1) == expected.argmax(-1)).sum())
            rows += len(expected)
    if worst > atol:
        raise ExportError(f"{output}: ONNX outputs differ from PyTorch by up to {worst:.2e} on {rows} rows "
                          f"(more than {atol:.0e}); do not use this file")
    return {"path": str(output), "rows": rows, "max_abs_diff": worst, "top1_agreement": agree / max(rows, 1)}
