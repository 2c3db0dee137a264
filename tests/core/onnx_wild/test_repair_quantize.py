"""Repair of ONNX files as exporters write them, then onnxruntime quantization of the result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn
from torch.utils.data import TensorDataset

from studio.core.errors import ModelLoadError, StudioError
from studio.core.export.onnx_export import external_data_files, save_onnx
from studio.core.methods.quantization.ort import quantize_onnx
from studio.core.models.onnx_file import load_onnx
from studio.core.models.onnx_repair import default_opset, repair_onnx
from tests.core.onnx_wild.conftest import TINY_SHAPE, TinyCNN, export_legacy

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _outputs(path: Path, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _weight_scales(path: Path) -> dict[str, tuple[int, ...]]:
    """Shape of the scale of every int8 weight's DequantizeLinear, by the node reading it."""
    model = onnx.load(str(path))
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dequantized = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"
                   and values.get(n.input[0], np.zeros(0, np.float32)).dtype == np.int8}
    return {node.name: values[dequantized[node.input[1]].input[1]].shape
            for node in model.graph.node if len(node.input) > 1 and node.input[1] in dequantized}


def test_constant_weights_at_opset_11_repair_then_quantize_per_channel(wild_cnn, tmp_path):
    original = onnx.load(str(wild_cnn))
    assert default_opset(original) == 11 and not original.graph.initializer

    repaired = repair_onnx(load_onnx(wild_cnn).onnx_model)
    assert any("opset 11 → 13" in step for step in repaired.steps)
    assert any("Moved 8 constant tensor(s)" in step for step in repaired.steps)
    assert default_opset(repaired.model) == 13
    assert not [n for n in repaired.model.graph.node if n.op_type == "Constant"]
    assert len(repaired.model.graph.initializer) == 8
    assert len(original.graph.initializer) == 0  # the loaded model is not changed

    fixed = save_onnx(repaired.model, tmp_path / "repaired.onnx")
    inputs = np.random.default_rng(0).standard_normal((16, *TINY_SHAPE[1:])).astype(np.float32)
    np.testing.assert_allclose(_outputs(fixed, inputs), _outputs(wild_cnn, inputs), atol=1e-6)

    calibration = TensorDataset(torch.randn(64, *TINY_SHAPE[1:]))
    quantized = quantize_onnx(fixed, tmp_path / "int8.onnx", "static", calibration,
                              per_channel=True)
    scales = _weight_scales(quantized)
    assert scales == {"/conv1/Conv": (8,), "/conv2/Conv": (16,), "/fc/Gemm": (32,),
                      "/head/Gemm": (10,)}  # one scale per output channel: per-channel int8
    assert _cosine(_outputs(quantized, inputs), _outputs(wild_cnn, inputs)) > 0.99
    assert quantized.stat().st_size < 0.5 * wild_cnn.stat().st_size


def test_dynamic_batch_and_sequence_quantize_without_symbolic_shapes(tmp_path, monkeypatch):
    class Positions(nn.Module):
        """Adds a slice of a position table, as BERT-style embeddings do: ORT's symbolic shape
        inference cannot follow the Expand of that slice."""

        def __init__(self) -> None:
            super().__init__()
            self.fc, self.out = nn.Linear(16, 32), nn.Linear(32, 4)
            self.register_buffer("table", torch.randn(1, 64, 16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batch, length = x.shape[0], x.shape[1]
            return self.out(torch.relu(self.fc(x + self.table[:, :length].expand(
                batch, length, 16))))

    torch.manual_seed(0)
    path = export_legacy(Positions(), tmp_path / "seq.onnx", (2, 5, 16), 17,
                         {0: "batch", 1: "sequence"})
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    litter = tmp_path / "litter"
    litter.mkdir()
    monkeypatch.chdir(litter)  # where it fails, it saves the model it got stuck on
    with pytest.raises(Exception, match="Incomplete symbolic shape inference"):
        SymbolicShapeInference.infer_shapes(onnx.load(str(path)))
    assert (litter / "sym_shape_infer_temp.onnx").exists()

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    prepared: list[str] = []
    quantized = quantize_onnx(path, tmp_path / "int8.onnx", "static",
                              TensorDataset(torch.randn(32, 7, 16)), prepared=prepared)
    assert prepared == ["static quantization: pre-processed without symbolic shape inference "
                        "(it cannot follow this model's dynamic shapes)"]
    assert list(work.iterdir()) == []  # nothing left in the working folder
    inputs = np.random.default_rng(1).standard_normal((3, 11, 16)).astype(np.float32)
    actual = _outputs(quantized, inputs)
    assert actual.shape == (3, 11, 4)
    assert _cosine(actual, _outputs(path, inputs)) > 0.99
    assert _weight_scales(quantized)  # the MatMul weights really are int8


def test_external_data_model_repairs_and_quantizes(tmp_path, save_with_external_data):
    torch.manual_seed(0)
    exported = export_legacy(TinyCNN(), tmp_path / "exported.onnx", TINY_SHAPE, 11,
                             {0: "batch"})
    folder = tmp_path / "model"
    folder.mkdir()
    path = save_with_external_data(exported, folder / "model.onnx", "model.weights")
    assert external_data_files(path) == [folder / "model.weights"]

    repaired = repair_onnx(load_onnx(path).onnx_model, data_dir=folder)  # weights stay there
    assert default_opset(repaired.model) == 13
    fixed = save_onnx(repaired.model, tmp_path / "repaired.onnx", folder)
    assert external_data_files(fixed) == [tmp_path / "repaired.onnx.data"]  # kept outside
    quantized = quantize_onnx(fixed, tmp_path / "int8.onnx", "static",
                              TensorDataset(torch.randn(32, *TINY_SHAPE[1:])))
    inputs = np.random.default_rng(2).standard_normal((8, *TINY_SHAPE[1:])).astype(np.float32)
    assert _cosine(_outputs(quantized, inputs), _outputs(path, inputs)) > 0.99
    assert external_data_files(quantized) == [tmp_path / "int8.onnx.data"]


def test_constants_inside_subgraphs_move_into_their_own_graph():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    flag = helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, [])

    def branch(name: str, value: float) -> onnx.GraphProto:
        constant = helper.make_node("Constant", [], [f"{name}_w"], value=numpy_helper.from_array(
            np.full(2, value, np.float32), f"{name}_w"))
        add = helper.make_node("Add", ["x", f"{name}_w"], [f"{name}_out"])
        return helper.make_graph([constant, add], name, [], [
            helper.make_tensor_value_info(f"{name}_out", onnx.TensorProto.FLOAT, [2])])

    node = helper.make_node("If", ["flag"], ["y"], then_branch=branch("then", 1.0),
                            else_branch=branch("else", -1.0))
    graph = helper.make_graph([node], "g", [x, flag], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    repaired = repair_onnx(model).model
    then = repaired.graph.node[0].attribute[0].g
    assert [t.name for t in then.initializer] and [n.op_type for n in then.node] == ["Add"]
    session = ort.InferenceSession(repaired.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    feed = {"x": np.array([1.0, 2.0], np.float32)}
    assert session.run(None, feed | {"flag": np.array(True)})[0].tolist() == [2.0, 3.0]
    assert session.run(None, feed | {"flag": np.array(False)})[0].tolist() == [0.0, 1.0]


def test_a_damaged_constant_is_named(wild_cnn, tmp_path):
    model = onnx.load(str(wild_cnn))
    constant = next(n for n in model.graph.node if n.output[0] == "fc.weight")
    constant.attribute[0].t.raw_data = constant.attribute[0].t.raw_data[:100]
    damaged = tmp_path / "damaged.onnx"
    onnx.save(model, str(damaged))
    with pytest.raises(ModelLoadError, match=r"damaged\.onnx: Constant node 'fc\.weight\.const' "
                                             r"holds a damaged tensor.*export it again"):
        load_onnx(damaged)
    with pytest.raises(StudioError, match=r"Constant node .fc\.weight\.const. holds a damaged"):
        repair_onnx(model)


def test_a_failed_opset_upgrade_names_the_opset_and_the_op():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                               helper.make_node("Swish", ["r"], ["y"], name="swish")],
                              "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    with pytest.raises(StudioError, match=r"cannot upgrade the model from opset 11 to 13: op "
                                          r"'Swish' is not defined at opset 11.*opset 13"):
        repair_onnx(model)
    assert repair_onnx(model, min_opset=None).steps == []  # without the upgrade: nothing to do


def test_constants_given_as_plain_numbers_become_initializers():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 2])
    nodes = [helper.make_node("Constant", [], ["shape"], name="shape", value_ints=[3, 2]),
             helper.make_node("Constant", [], ["half"], name="half", value_float=0.5),
             helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
             helper.make_node("Mul", ["r", "half"], ["y"], name="mul")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    repaired = repair_onnx(model).model
    values = {t.name: numpy_helper.to_array(t) for t in repaired.graph.initializer}
    assert values["shape"].tolist() == [3, 2] and values["shape"].dtype == np.int64
    assert values["half"] == np.float32(0.5) and values["half"].shape == ()
    session = ort.InferenceSession(repaired.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    result = session.run(None, {"x": np.arange(6, dtype=np.float32).reshape(2, 3)})[0]
    assert result.tolist() == [[0.0, 0.5], [1.0, 1.5], [2.0, 2.5]]
