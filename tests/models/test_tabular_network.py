"""models/tabular_network.py is copied into every tabular best/ and must run without tunesmith."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from tunesmith.models import tabular_network
from tunesmith.models.tabular_network import TabularNetwork


def test_the_standalone_file_imports_only_numpy_pandas_torch_and_safetensors():
    tree = ast.parse(Path(tabular_network.__file__).read_text())
    roots = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
             for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
             for a in (n.names if isinstance(n, ast.Import) else [n])}
    assert roots <= {"__future__", "json", "pathlib", "typing", "numpy", "pandas", "torch", "safetensors", "lightgbm"}, roots


@pytest.mark.parametrize("kind", ["mlp", "ft-transformer"])
def test_both_architectures_take_numbers_and_categories(kind):
    spec = {"numeric": [{"name": "a", "mean": 0, "std": 1, "missing": True}], "categorical": [{"name": "c", "categories": ["x", "y"]}],
            "architecture": {"kind": kind, "hidden_size": 16, "blocks": 2, "heads": 4, "dropout": 0.0, "outputs": 3}}
    net = TabularNetwork(spec).eval()
    out = net(torch.randn(5, 2), torch.tensor([[0], [1], [2], [3], [2]]))
    assert out.shape == (5, 3) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="unknown tabular architecture 'gbdt'"):
        TabularNetwork({**spec, "architecture": {**spec["architecture"], "kind": "gbdt"}})
