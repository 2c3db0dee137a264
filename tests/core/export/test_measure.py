"""Measurements on exported files: latency side by side, parity, compressed bytes, accuracy."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from studio.core.data.task import demo_task
from studio.core.export.measure import (
    count_ops,
    initializer_bytes,
    inputs_for_batches,
    latency_ms,
    onnx_accuracy,
    parity,
    zip_bytes,
)
from studio.core.export.onnx_export import export_onnx, onnx_file_bytes
from studio.core.train.loop import evaluate


@pytest.fixture
def demo_path(tmp_path: Path, demo_module: nn.Module) -> Path:
    return export_onnx(demo_module, torch.zeros(1, 1, 28, 28), tmp_path / "demo.onnx")


def test_latency_gives_a_median_per_model_and_batch(tmp_path: Path, demo_path: Path) -> None:
    twin = tmp_path / "twin.onnx"
    twin.write_bytes(demo_path.read_bytes())
    inputs = inputs_for_batches(torch.rand(5, 1, 28, 28), (1, 8))
    assert {b: x.shape[0] for b, x in inputs.items()} == {1: 1, 8: 8}
    result = latency_ms({"a": demo_path, "b": twin}, inputs, repeats=3, warmup=1)
    assert set(result) == {"a", "b"}
    for timings in result.values():
        assert set(timings) == {1, 8}
        assert all(isinstance(ms, float) and ms > 0 for ms in timings.values())
        assert timings[8] > timings[1]


def test_parity_of_the_same_model_is_exact(demo_path: Path, demo_module: nn.Module) -> None:
    inputs = demo_task().test.tensors[0][:64]
    result = parity(demo_module, demo_path, inputs)
    assert result["max_abs_diff"] < 1e-4
    assert result["top1_agreement"] == 1.0


def test_accuracy_and_ops_of_the_exported_file(demo_path: Path, demo_module: nn.Module) -> None:
    test = demo_task().test
    assert onnx_accuracy(demo_path, test) == pytest.approx(evaluate(demo_module, test), abs=2e-3)
    assert count_ops(demo_path) == {"Conv": 5, "Relu": 5, "MaxPool": 2, "Add": 1,
                                    "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}
    assert set(initializer_bytes(demo_path)) == {"float32"}


def test_zeros_shrink_the_zip_but_not_the_file(tmp_path: Path, demo_path: Path,
                                               demo_module: nn.Module) -> None:
    pruned = copy.deepcopy(demo_module)
    with torch.no_grad():
        for module in pruned.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                weight = module.weight
                weight[weight.abs() <= weight.abs().flatten().median()] = 0.0
    pruned_path = export_onnx(pruned, torch.zeros(1, 1, 28, 28), tmp_path / "pruned.onnx")
    assert onnx_file_bytes(pruned_path) == onnx_file_bytes(demo_path)
    assert zip_bytes(pruned_path) < 0.75 * zip_bytes(demo_path)
    assert zip_bytes(demo_path) < onnx_file_bytes(demo_path)
