"""ONNX files as real exporters write them, built in the tests: weights in Constant nodes
(paddle2onnx style), old opsets, dynamic shapes, external data."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch
from onnx import helper
from torch import nn

from studio.core.models.loader import open_model


def weights_to_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer rewritten as a Constant node at the top of the graph, in place."""
    constants = [helper.make_node("Constant", [], [tensor.name], name=f"{tensor.name}.const",
                                  value=tensor) for tensor in model.graph.initializer]
    nodes = list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend([*constants, *nodes])
    return model


def export_legacy(module: nn.Module, path: Path, shape: tuple[int, ...], opset: int = 11,
                  dynamic_axes: dict[int, str] | None = None) -> Path:
    """The TorchScript exporter at ``opset``; ``dynamic_axes`` for the input and the output."""
    axes = {"input": dynamic_axes, "output": dynamic_axes} if dynamic_axes else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(shape),), str(path), dynamo=False,
                          opset_version=opset, input_names=["input"], output_names=["output"],
                          dynamic_axes=axes)
    return path


class TinyCNN(nn.Module):
    """About 10k weights: enough for int8 to shrink the file, small enough to be instant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(torch.relu(self.fc(x.flatten(1))))


TINY_SHAPE = (1, 1, 8, 8)


@pytest.fixture
def wild_cnn(tmp_path: Path) -> Path:
    """A small CNN exported at opset 11 with dynamic batch, its weights in Constant nodes."""
    torch.manual_seed(0)
    path = export_legacy(TinyCNN(), tmp_path / "exported.onnx", TINY_SHAPE, 11, {0: "batch"})
    wild = tmp_path / "wild.onnx"
    onnx.save(weights_to_constants(onnx.load(str(path))), str(wild))
    return wild


@pytest.fixture(scope="session")
def wild_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained demo CNN exported at opset 11 (dynamic batch), weights in Constant nodes."""
    folder = tmp_path_factory.mktemp("wild-demo")
    path = export_legacy(open_model("demo").module, folder / "exported.onnx", (1, 1, 28, 28), 11,
                         {0: "batch"})
    wild = folder / "demo-wild.onnx"
    onnx.save(weights_to_constants(onnx.load(str(path))), str(wild))
    return wild


@pytest.fixture(scope="session")
def make_wild() -> Callable[..., Path]:
    """``make_wild(module, path, shape, opset=11, dynamic_axes=None)``: export, then move the
    weights into Constant nodes."""

    def make(module: nn.Module, path: Path, shape: tuple[int, ...], opset: int = 11,
             dynamic_axes: dict[int, str] | None = None) -> Path:
        export_legacy(module, path, shape, opset, dynamic_axes)
        onnx.save(weights_to_constants(onnx.load(str(path))), str(path))
        return path

    return make
