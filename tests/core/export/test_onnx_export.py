"""ONNX export: one file, same outputs as torch, free batch size, nothing left behind on failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from studio.core.errors import StudioError
from studio.core.export.measure import run_onnx
from studio.core.export.onnx_export import (
    export_onnx,
    external_data_files,
    onnx_file_bytes,
    save_onnx,
)


def test_demo_exports_one_file_that_matches_torch(tmp_path: Path, demo_module: nn.Module) -> None:
    path = export_onnx(demo_module, torch.zeros(1, 1, 28, 28), tmp_path / "demo.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.onnx"]
    assert external_data_files(path) == []
    assert onnx_file_bytes(path) == path.stat().st_size
    onnx.checker.check_model(str(path))
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 7):  # the batch axis is free
        inputs = torch.rand((batch, 1, 28, 28), generator=generator)
        with torch.no_grad():
            expected = demo_module(inputs).numpy()
        actual = run_onnx(path, inputs)
        assert actual.shape == (batch, 10)
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


def test_node_names_keep_module_scopes(tmp_path: Path, demo_module: nn.Module) -> None:
    path = export_onnx(demo_module, torch.zeros(1, 1, 28, 28), tmp_path / "demo.onnx")
    names = {node.name for node in onnx.load(str(path)).graph.node}
    assert {"/res/conv2/Conv", "/head/head.2/Gemm"} <= names


def test_export_keeps_training_mode(tmp_path: Path, demo_module: nn.Module) -> None:
    demo_module.train()
    export_onnx(demo_module, torch.zeros(1, 1, 28, 28), tmp_path / "demo.onnx")
    assert demo_module.training


def test_fixed_batch_when_asked(tmp_path: Path, demo_module: nn.Module) -> None:
    path = export_onnx(demo_module, torch.zeros(2, 1, 28, 28), tmp_path / "demo.onnx",
                       dynamic_batch=False)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 1, 28, 28]


def test_external_data_is_one_file_and_counted(tmp_path: Path, demo_module: nn.Module) -> None:
    path = export_onnx(demo_module, torch.zeros(1, 1, 28, 28), tmp_path / "demo.onnx",
                       external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.onnx", "demo.onnx.data"]
    assert external_data_files(path) == [tmp_path / "demo.onnx.data"]
    assert onnx_file_bytes(path) == sum(p.stat().st_size for p in tmp_path.iterdir())
    assert path.stat().st_size < 20_000 < onnx_file_bytes(path)
    inputs = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        np.testing.assert_allclose(run_onnx(path, inputs), demo_module(inputs).numpy(),
                                   atol=1e-4, rtol=0)


class _Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this layer cannot be traced")


def test_failed_export_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous good file")
    with pytest.raises(StudioError, match=r"cannot export _Broken to ONNX.*cannot be traced"):
        export_onnx(_Broken(), torch.zeros(1, 4), target)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert target.read_bytes() == b"previous good file"


def test_save_onnx_writes_atomically(tmp_path: Path, demo_module: nn.Module) -> None:
    source = export_onnx(demo_module, torch.zeros(1, 1, 28, 28), tmp_path / "a.onnx")
    copy = save_onnx(onnx.load(str(source)), tmp_path / "sub" / "b.onnx")
    assert copy.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in copy.parent.iterdir()) == ["b.onnx"]
