"""onnxruntime post-training quantization of exported files, driven by the per-layer plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from studio.core.data.task import TaskData, demo_task
from studio.core.errors import StudioError
from studio.core.export.measure import count_ops, initializer_bytes, onnx_accuracy, run_onnx
from studio.core.export.onnx_export import export_onnx, onnx_file_bytes
from studio.core.graph.onnx_tree import build_onnx_tree
from studio.core.graph.torch_tree import build_torch_tree
from studio.core.methods.quantization.ort import gemm_to_matmul, quantize_onnx
from studio.core.methods.quantization.ort_plan import apply_quant_plan
from studio.core.models.inputs import InputSpec
from studio.core.models.loader import open_model
from studio.core.plan import LayerSpec, Plan
from studio.core.plan.ort_rules import QuantPlan, plan_to_ort, resolved_by_name

INT8 = LayerSpec(weight_bits="int8", act_bits="int8")


@pytest.fixture(scope="module")
def demo_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("quant")
    return export_onnx(open_model("demo").module, torch.zeros(1, 1, 28, 28),
                       folder / "demo.onnx")


@pytest.fixture(scope="module")
def fp32_accuracy(demo_fp32: Path, task: TaskData) -> float:
    return onnx_accuracy(demo_fp32, task.test)


@pytest.fixture(scope="module")
def demo_int8(demo_fp32: Path, task: TaskData) -> Path:
    return quantize_onnx(demo_fp32, demo_fp32.with_name("demo-int8.onnx"), "static",
                         calibration=task.calibration)


def _plan_for_demo(plan: Plan, onnx_path: Path, int8_path: str = "auto") -> QuantPlan:
    module = open_model("demo").module
    torch_tree = build_torch_tree(module, InputSpec((1, 1, 28, 28)), "demo")
    onnx_tree = build_onnx_tree(onnx.load(str(onnx_path)), "demo")
    return plan_to_ort(onnx_tree, resolved_by_name(torch_tree, plan), int8_path=int8_path)


def _weight_source(model: onnx.ModelProto, node_name: str) -> str:
    """``initializer:<dtype>`` or the op type producing the node's weight input."""
    node = next(n for n in model.graph.node if n.name == node_name)
    initializers = {t.name: t for t in model.graph.initializer}
    if node.input[1] in initializers:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(initializers[node.input[1]].data_type)
        return f"initializer:{dtype.name}"
    return next(n.op_type for n in model.graph.node if node.input[1] in n.output)


def test_static_int8_is_small_accurate_and_really_int8(demo_fp32: Path, demo_int8: Path,
                                                        task: TaskData,
                                                        fp32_accuracy: float) -> None:
    assert onnx_file_bytes(demo_int8) <= 0.28 * onnx_file_bytes(demo_fp32)  # 0.27 measured
    assert onnx_accuracy(demo_int8, task.test) >= fp32_accuracy - 0.005
    ops = count_ops(demo_int8)
    assert ops["QuantizeLinear"] >= 6 and ops["DequantizeLinear"] >= 12
    stored = initializer_bytes(demo_int8)
    assert stored["int8"] > 0.9 * sum(stored.values())  # the weights are stored as int8
    model = onnx.load(str(demo_int8))
    assert _weight_source(model, "/res/conv2/Conv") == "DequantizeLinear"
    assert _weight_source(model, "/head/head.2/Gemm") == "DequantizeLinear"
    assert sorted(p.name for p in demo_int8.parent.iterdir()) == ["demo-int8.onnx", "demo.onnx"]


def test_plan_excludes_a_layer_which_stays_float(demo_fp32: Path, task: TaskData,
                                                 tmp_path: Path, fp32_accuracy: float) -> None:
    plan = Plan({"": INT8, "head.2": LayerSpec(exclude=True)})
    quant = _plan_for_demo(plan, demo_fp32)
    assert quant.mode == "static"
    assert quant.exclude_nodes == ("/head/head.2/Gemm",)
    assert quant.decisions["/head/head.2/Gemm"] == "float (excluded)"
    assert quant.decisions["/res/conv2/Conv"] == "int8 static"
    path = apply_quant_plan(demo_fp32, tmp_path / "mixed.onnx", quant, task.calibration)
    model = onnx.load(str(path))
    assert _weight_source(model, "/head/head.2/Gemm") == "initializer:float32"
    assert _weight_source(model, "/res/conv2/Conv") == "DequantizeLinear"
    assert onnx_accuracy(path, task.test) >= fp32_accuracy - 0.005


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(demo_fp32: Path, task: TaskData, tmp_path: Path,
                                   fp32_accuracy: float, method: str) -> None:
    path = quantize_onnx(demo_fp32, tmp_path / "q.onnx", "static", calibration=task.calibration,
                         calibrate_method=method, per_channel=False)
    assert onnx_accuracy(path, task.test) >= fp32_accuracy - 0.01


def test_fp16_halves_the_file_and_keeps_outputs(demo_fp32: Path, task: TaskData,
                                                tmp_path: Path) -> None:
    path = quantize_onnx(demo_fp32, tmp_path / "half.onnx", "fp16")
    assert 0.45 < onnx_file_bytes(path) / onnx_file_bytes(demo_fp32) < 0.55
    assert set(initializer_bytes(path)) == {"float16"}
    images = task.test.tensors[0][:256]
    expected, actual = run_onnx(demo_fp32, images), run_onnx(path, images)
    assert actual.dtype == np.float32  # inputs and outputs stay float32
    assert np.abs(actual - expected).max() < 0.05 * np.abs(expected).max()
    assert (actual.argmax(1) == expected.argmax(1)).mean() >= 0.99


def _mlp(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128),
                        nn.ReLU(), nn.Linear(128, 10))
    images = demo_task().test.tensors[0][:64]
    return export_onnx(mlp, images[:1], tmp_path / "mlp.onnx"), images


def test_dynamic_int8_on_an_mlp(tmp_path: Path) -> None:
    path, images = _mlp(tmp_path)
    assert count_ops(path)["Gemm"] == 3  # nn.Linear on 2-D input exports as Gemm
    quantized = quantize_onnx(path, tmp_path / "dyn.onnx", "dynamic")
    ops = count_ops(quantized)
    assert ops.get("MatMulInteger", 0) + ops.get("DynamicQuantizeMatMul", 0) == 3
    assert "Gemm" not in ops
    assert onnx_file_bytes(quantized) < 0.3 * onnx_file_bytes(path)
    expected, actual = run_onnx(path, images), run_onnx(quantized, images)
    assert np.abs(actual - expected).max() < 0.05 * np.abs(expected).max()


def test_int4_weight_only_matmul_on_an_mlp(tmp_path: Path) -> None:
    path, images = _mlp(tmp_path)
    quantized = quantize_onnx(path, tmp_path / "int4.onnx", "int4", block_size=32)
    ops = count_ops(quantized)
    assert ops["MatMulNBits"] == 3 and "Gemm" not in ops and "MatMul" not in ops
    assert onnx_file_bytes(quantized) < 0.2 * onnx_file_bytes(path)
    expected, actual = run_onnx(path, images), run_onnx(quantized, images)
    cosine = (expected * actual).sum() / np.linalg.norm(expected) / np.linalg.norm(actual)
    assert cosine > 0.99
    assert np.abs(actual - expected).max() < 0.2 * np.abs(expected).max()


def test_gemm_to_matmul_keeps_outputs(tmp_path: Path) -> None:
    path, images = _mlp(tmp_path)
    model = onnx.load(str(path))
    renamed = gemm_to_matmul(model, ["/1/Gemm"])
    assert renamed == {"/1/Gemm": "/1/MatMul"}
    assert [n.op_type for n in model.graph.node][:3] == ["Flatten", "MatMul", "Add"]
    onnx.save(model, str(tmp_path / "rewritten.onnx"))
    np.testing.assert_allclose(run_onnx(tmp_path / "rewritten.onnx", images),
                               run_onnx(path, images), atol=1e-5)


def test_plan_modes(demo_fp32: Path) -> None:
    auto = _plan_for_demo(Plan({"": LayerSpec(weight_bits="int8")}), demo_fp32)
    assert auto.mode == "static" and len(auto.quantize_nodes) == 6  # convolutions: static
    dynamic = _plan_for_demo(Plan({"": LayerSpec(weight_bits="int8")}), demo_fp32, "dynamic")
    assert dynamic.mode == "dynamic" and len(dynamic.quantize_nodes) == 6
    assert any("ConvInteger" in note for note in dynamic.notes)
    half = _plan_for_demo(Plan({"res": LayerSpec(weight_bits="fp16")}), demo_fp32)
    assert half.mode == "fp16"
    assert half.fp16_nodes == ("/res/conv1/conv1.0/Conv", "/res/conv2/Conv")
    assert "/res/Add" not in half.exclude_nodes and "/stem/stem.0/Conv" in half.exclude_nodes
    nothing = _plan_for_demo(Plan(), demo_fp32)
    assert nothing.is_empty and nothing.exclude_nodes == tuple(nothing.decisions)


def test_plan_low_bits_and_conflicts(demo_fp32: Path) -> None:
    plan = Plan({"": INT8, "res.conv2": LayerSpec(weight_bits="int4"),
                 "head.2": LayerSpec(weight_bits="int4"),
                 "block1": LayerSpec(act_bits="fp32"), "stem": LayerSpec(weight_bits="fp16")})
    quant = _plan_for_demo(plan, demo_fp32)
    assert quant.mode == "static"
    assert quant.matmul_nbits == {"/head/head.2/Gemm": 4}
    assert quant.int4_matmul_nodes == ("/head/head.2/Gemm",)
    assert quant.qat_layers == {"res.conv2": 4}
    assert quant.decisions["/res/conv2/Conv"] == "int8 static"
    assert {"/head/head.2/Gemm", "/block1/block1.0/Conv", "/stem/stem.0/Conv"} <= set(
        quant.exclude_nodes)
    text = " ".join(quant.notes)
    assert "'res.conv2'" in text and "Quantization-aware training" in text
    assert "'block1.0'" in text and "static" in text  # dynamic cannot mix with static
    assert "'stem.0'" in text and "fp16" in text


def test_plan_int4_head_with_int8_body(demo_fp32: Path, task: TaskData, tmp_path: Path,
                                       fp32_accuracy: float) -> None:
    plan = Plan({"": INT8, "head.2": LayerSpec(weight_bits="int4")})
    quant = _plan_for_demo(plan, demo_fp32)
    path = apply_quant_plan(demo_fp32, tmp_path / "mixed.onnx", quant, task.calibration)
    ops = count_ops(path)
    assert ops["MatMulNBits"] == 1 and "Gemm" not in ops and ops["QuantizeLinear"] >= 5
    assert onnx_accuracy(path, task.test) >= fp32_accuracy - 0.01
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.onnx"]


def test_clear_errors(demo_fp32: Path, tmp_path: Path) -> None:
    with pytest.raises(StudioError, match="calibration samples"):
        quantize_onnx(demo_fp32, tmp_path / "q.onnx", "static")
    with pytest.raises(StudioError, match="use one of static"):
        quantize_onnx(demo_fp32, tmp_path / "q.onnx", "int3")  # type: ignore[arg-type]
    with pytest.raises(StudioError, match="no such ONNX file"):
        quantize_onnx(tmp_path / "missing.onnx", tmp_path / "q.onnx", "fp16")
    with pytest.raises(StudioError, match="calibration method"):
        quantize_onnx(demo_fp32, tmp_path / "q.onnx", "static",
                      calibration=demo_task().calibration, calibrate_method="kl")
    assert list(tmp_path.iterdir()) == []


def test_weights_of_int8_file_are_integers(demo_int8: Path) -> None:
    model = onnx.load(str(demo_int8))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if len(t.dims) == 4]
    assert weights and all(w.dtype == np.int8 for w in weights)


def test_dynamic_keeps_an_excluded_gemm_float(demo_fp32: Path, tmp_path: Path) -> None:
    path = quantize_onnx(demo_fp32, tmp_path / "d.onnx", "dynamic",
                         exclude_nodes=["/head/head.2/Gemm"])
    ops = count_ops(path)
    assert ops["ConvInteger"] == 5 and "MatMulInteger" not in ops


def test_dynamic_body_with_int4_head(demo_fp32: Path, tmp_path: Path) -> None:
    plan = Plan({"": LayerSpec(weight_bits="int8"), "head.2": LayerSpec(weight_bits="int4")})
    quant = _plan_for_demo(plan, demo_fp32, "dynamic")
    assert quant.mode == "dynamic" and quant.matmul_nbits == {"/head/head.2/Gemm": 4}
    path = apply_quant_plan(demo_fp32, tmp_path / "mixed.onnx", quant)
    ops = count_ops(path)
    assert ops["ConvInteger"] == 5 and ops["MatMulNBits"] == 1 and "MatMulInteger" not in ops
    images = demo_task().test.tensors[0][:64]
    agree = run_onnx(path, images).argmax(1) == run_onnx(demo_fp32, images).argmax(1)
    assert agree.mean() >= 0.95


def test_int2_weight_only_matmul_runs(tmp_path: Path) -> None:
    path, images = _mlp(tmp_path)
    quantized = quantize_onnx(path, tmp_path / "int2.onnx", "nbits", bits=2, block_size=32,
                              nodes=["/3/Gemm"])
    ops = count_ops(quantized)
    assert ops["MatMulNBits"] == 1 and ops["Gemm"] == 2
    assert run_onnx(quantized, images).shape == (64, 10)
