"""MACs of ONNX files with free or -1 dims: inferred from the example input, never negative,
and never a silent 0 for a model with convolutions."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from studio.cli.main import main
from studio.core.errors import InputError
from studio.core.models.inputs import InputSpec
from studio.core.workspace import build_tree, open_workspace
from tests.core.onnx_wild.conftest import export_legacy

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Detector(nn.Module):
    """Two convolutions, global pooling and a linear head: works at any image size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(x.mean((2, 3)))


def hand_macs(height: int, width: int) -> int:
    conv1 = 8 * height * width * (3 * 3 * 3)
    conv2 = 16 * (height // 2) * (width // 2) * (8 * 3 * 3)
    return conv1 + conv2 + 16 * 10


def _dynamic_hw(path: Path) -> Path:
    torch.manual_seed(0)
    return export_legacy(Detector(), path, (1, 3, 32, 32), 13,
                         {0: "batch", 2: "height", 3: "width"})


def _batch_minus_one(path: Path) -> Path:
    """Fixed 32×32 images, the batch dim stored as -1 (as some converters write it)."""
    export_legacy(Detector(), path, (1, 3, 32, 32), 13)
    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = -1
    onnx.save(model, str(path))
    return path


def test_free_image_size_says_macs_are_unknown_until_an_example_is_given(tmp_path):
    workspace = open_workspace(str(_dynamic_hw(tmp_path / "det.onnx")))
    tree = workspace.tree
    assert workspace.example is None  # no guess of 1×1 images
    assert tree.get("/conv1/Conv").macs == 0
    assert len(tree.notes) == 1 and "MACs of 2 Conv/MatMul/Gemm node(s) are unknown" in \
        tree.notes[0] and "input [" in tree.notes[0] and "--input-shape" in tree.notes[0]

    example = open_workspace(str(tmp_path / "det.onnx"), example=InputSpec((1, 3, 32, 32)))
    assert example.tree.root.total_macs == hand_macs(32, 32)
    assert example.tree.notes == []
    # The GUI's Set Example Input rebuilds the tree through build_tree with the new example.
    bigger = build_tree(workspace.loaded, InputSpec((1, 3, 64, 48)))
    assert bigger.root.total_macs == hand_macs(64, 48)
    assert bigger.get("/conv2/Conv").output_shape == ("batch", 16, 32, 24)


def test_a_batch_of_minus_one_counts_per_sample_not_negative(tmp_path):
    path = _batch_minus_one(tmp_path / "cls.onnx")
    plain = open_workspace(str(path))
    assert plain.tree.root.total_macs == hand_macs(32, 32)
    assert all(node.macs >= 0 for node in plain.tree)
    assert str(plain.example) == "1,3,32,32"
    given = open_workspace(str(path), example=InputSpec((4, 3, 32, 32)))
    assert given.tree.root.total_macs == hand_macs(32, 32)  # per sample, whatever the batch


def test_inspect_input_shape_on_an_onnx_file(tmp_path, capsys):
    path = _dynamic_hw(tmp_path / "det.onnx")
    assert main(["inspect", str(path), "--json", "--input-shape", "1,3,40,40"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["macs"] == hand_macs(40, 40)
    assert report["example_input"] == "1,3,40,40" and report["notes"] == []
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "MACs of 2 Conv/MatMul/Gemm node(s) are unknown" in text


def test_an_example_that_does_not_fit_the_onnx_input_is_refused(tmp_path):
    path = _batch_minus_one(tmp_path / "cls.onnx")
    with pytest.raises(InputError, match=r"does not fit the model's input 'input' of shape "
                                         r"\['\?', 3, 32, 32\]"):
        open_workspace(str(path), example=InputSpec((1, 3, 28, 28)))
    with pytest.raises(InputError, match="give 4 dims"):
        open_workspace(str(path), example=InputSpec((1, 3, 32)))
