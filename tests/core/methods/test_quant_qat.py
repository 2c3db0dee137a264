"""Quantization-aware training: fake quant at 2-8 bits, real training steps, int8 QDQ export."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torch.utils.data import TensorDataset

from studio.core.data.task import TaskData
from studio.core.demo.model import DemoCNN
from studio.core.errors import StudioError
from studio.core.export.measure import (
    count_ops,
    initializer_bytes,
    onnx_accuracy,
    ort_session,
    parity,
)
from studio.core.graph.torch_tree import build_torch_tree
from studio.core.jobs import CancelToken
from studio.core.methods.quantization.qat import (
    FakeQuantMixin,
    convert_qat_to_qdq_onnx,
    fold_batchnorms,
    prepare_qat,
    qat_bits_from_plan,
    qat_layers,
)
from studio.core.methods.quantization.qat_ort import convert_qat_to_ort_static
from studio.core.models.inputs import InputSpec
from studio.core.models.loader import open_model
from studio.core.plan import LayerSpec, Plan
from studio.core.plan.ort_rules import resolved_by_name
from studio.core.train.loop import TrainConfig, train

LAYERS = ("stem.0", "block1.0", "block2.0", "res.conv1.0", "res.conv2", "head.2")



def _demo() -> DemoCNN:
    module = open_model("demo").module
    assert isinstance(module, DemoCNN)
    return module


def _loss(model: nn.Module, data: TensorDataset) -> float:
    model.eval()
    with torch.no_grad():
        images, labels = data.tensors
        return float(nn.functional.cross_entropy(model(images), labels))


@pytest.fixture(scope="module")
def trained_qat(task: TaskData) -> tuple[nn.Module, float, float]:
    """The demo at 4-bit weights / 8-bit inputs, fine-tuned a few steps: (model, before, after)."""
    model = prepare_qat(_demo(), dict.fromkeys(LAYERS, 4), dict.fromkeys(LAYERS, 8))
    data = TensorDataset(*(t[:64] for t in task.train.tensors))  # one batch, four steps on it
    before = _loss(model, data)
    events = list(train(model, data, TrainConfig(epochs=4, lr=1e-4, batch_size=64),
                        CancelToken(), stage="qat"))
    assert any(getattr(e, "stage", None) == "qat" for e in events)
    return model, before, _loss(model, data)


def test_training_steps_lower_the_loss(trained_qat: tuple[nn.Module, float, float]) -> None:
    _, before, after = trained_qat
    assert after < before


def test_weights_in_forward_lie_on_a_4_bit_grid(
        trained_qat: tuple[nn.Module, float, float]) -> None:
    model = trained_qat[0]
    assert sorted(qat_layers(model)) == sorted(LAYERS)
    for layer in qat_layers(model).values():
        weight = layer.quantized_weight().detach()
        scale = layer.weight_scale()
        for channel, step in zip(weight, scale, strict=True):
            assert len(torch.unique(channel)) <= 16
            steps = channel / step
            assert torch.allclose(steps, steps.round(), atol=1e-3)
            assert steps.abs().max() <= 7 + 1e-3


def test_export_stores_int8_weights_and_agrees_with_torch(
        trained_qat: tuple[nn.Module, float, float], task: TaskData, tmp_path: Path) -> None:
    model = trained_qat[0]
    path = convert_qat_to_qdq_onnx(model, torch.zeros(1, 1, 28, 28), tmp_path / "qat.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["qat.onnx"]
    ops = count_ops(path)
    assert ops["DequantizeLinear"] == 12 and ops["QuantizeLinear"] == 6  # weights + inputs
    stored = initializer_bytes(path)
    assert stored["int8"] > 0.9 * sum(stored.values())
    proto = onnx.load(str(path))
    initializers = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    for node in proto.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            dequantize = producers[node.input[1]]
            assert dequantize.op_type == "DequantizeLinear"
            weight = initializers[dequantize.input[0]]
            assert weight.dtype == np.int8 and np.abs(weight).max() <= 7  # the 4-bit grid
    images = task.test.tensors[0][:256]
    assert parity(model, path, images)["top1_agreement"] >= 0.98
    assert onnx_accuracy(path, task.test) > 0.95


def _int8_weights(path: Path) -> list[np.ndarray]:
    proto = onnx.load(str(path))
    return [w for w in (numpy_helper.to_array(t) for t in proto.graph.initializer)
            if w.dtype == np.int8 and w.ndim >= 2]


def test_export_through_ort_static_runs_integer_kernels(
        trained_qat: tuple[nn.Module, float, float], task: TaskData, tmp_path: Path) -> None:
    model = trained_qat[0]
    path = convert_qat_to_ort_static(model, torch.zeros(1, 1, 28, 28), tmp_path / "qat.onnx",
                                     task.calibration)
    assert [p.name for p in tmp_path.iterdir()] == ["qat.onnx"]
    weights = _int8_weights(path)
    assert len(weights) == 6 and all(np.abs(w).max() <= 7 for w in weights)  # QAT's 4-bit grid
    ort_session(path, optimized_path=tmp_path / "optimized.onnx")
    fused = count_ops(tmp_path / "optimized.onnx")
    assert fused["QLinearConv"] == 5 and "Conv" not in fused  # every convolution is integer
    images = task.test.tensors[0][:256]
    assert parity(model, path, images)["top1_agreement"] >= 0.98


def test_low_bit_inputs_export_with_a_clip(task: TaskData, tmp_path: Path) -> None:
    model = prepare_qat(_demo(), {"res.conv2": 3, "head.2": 8}, {"res.conv2": 4, "head.2": 8})
    model.eval()
    images = task.test.tensors[0][:256]
    model(task.calibration.tensors[0])  # first eval batch calibrates the input ranges
    path = convert_qat_to_qdq_onnx(model, images[:1], tmp_path / "qat.onnx")
    assert count_ops(path)["Clip"] == 1
    result = parity(model, path, images)
    assert result["top1_agreement"] >= 0.98
    assert result["max_abs_diff"] < 0.5


def test_fold_batchnorms_keeps_outputs() -> None:
    model = _demo()
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        expected = model(images)
    folded = fold_batchnorms(model)
    assert folded == ["stem.1", "block1.1", "block2.1", "res.conv1.1", "res.bn2"]
    assert isinstance(model.res.bn2, nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected, atol=1e-4, rtol=1e-4)


def test_prepare_keeps_names_and_parameters() -> None:
    model = _demo()
    weight = model.res.conv2.weight
    prepare_qat(model, {"res.conv2": 4}, fold_bn=False)
    assert isinstance(model.res.conv2, FakeQuantMixin) and isinstance(model.res.conv2, nn.Conv2d)
    assert model.res.conv2.weight is weight
    assert "res.conv2.weight" in model.state_dict()
    assert isinstance(model.res.bn2, nn.BatchNorm2d)


def test_prepare_rejects_bad_layers_and_bits() -> None:
    with pytest.raises(StudioError, match="no layer named 'nope'"):
        prepare_qat(_demo(), {"nope": 4})
    with pytest.raises(StudioError, match=r"'res\.bn2' is a BatchNorm2d"):
        prepare_qat(_demo(), {"res.bn2": 4})
    with pytest.raises(StudioError, match="from 2 to 8"):
        prepare_qat(_demo(), {"res.conv2": 1})
    with pytest.raises(StudioError, match="activation bits"):
        prepare_qat(_demo(), {"res.conv2": 4}, {"res.conv2": 16})
    with pytest.raises(StudioError, match="prepare_qat first"):
        convert_qat_to_qdq_onnx(_demo(), torch.zeros(1, 1, 28, 28), "unused.onnx")
    fresh = prepare_qat(_demo(), {"res.conv2": 4}, {"res.conv2": 8})
    with pytest.raises(StudioError, match=r"'res\.conv2' has not seen any input"):
        convert_qat_to_qdq_onnx(fresh, torch.zeros(1, 1, 28, 28), "unused.onnx")


def test_bits_from_plan() -> None:
    model = _demo()
    tree = build_torch_tree(model, InputSpec((1, 1, 28, 28)), "demo")
    plan = Plan({"": LayerSpec(weight_bits="int8", act_bits="int8"),
                 "res": LayerSpec(weight_bits="int4", act_bits="int16"),
                 "head.2": LayerSpec(exclude=True)})
    bits, acts, notes = qat_bits_from_plan(model, resolved_by_name(tree, plan))
    assert bits == {"stem.0": 8, "block1.0": 8, "block2.0": 8, "res.conv1.0": 4,
                    "res.conv2": 4}
    assert acts["stem.0"] == 8 and acts["res.conv2"] is None
    assert any("int16" in note for note in notes)
    assert any("stored and run as int8" in note for note in notes)
    prepare_qat(copy.deepcopy(model), bits, acts)  # the maps are valid input
