"""The post-training methods around onnxruntime's quantizer, each on a real file: bias
correction, cross-layer equalization, per-tensor auto calibration and SmoothQuant."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks.ptq import weights_into_constants
from studio.core.data.metrics import cosine
from studio.core.engine.run import run_recipe_file
from studio.core.export.measure import ort_session, run_onnx
from studio.core.jobs import CancelToken
from studio.core.methods.quantization.bias_correction import correct_bias
from studio.core.methods.quantization.equalization import equalize
from studio.core.methods.quantization.ort import calibration_batches, quantize_onnx
from studio.core.methods.quantization.smoothing import smooth


def _export(module: nn.Module, path: Path, shape: tuple[int, ...], opset: int = 17) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(shape),), str(path), dynamo=False,
                          opset_version=opset, input_names=["input"], output_names=["out"],
                          dynamic_axes={"input": {0: "n"}, "out": {0: "n"}})
    return path


def _output_of(path: Path, node_name: str, inputs: np.ndarray) -> np.ndarray:
    """The output of the node named ``node_name`` on ``inputs``."""
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.name == node_name)
    model.graph.output.append(helper.make_tensor_value_info(node.output[0],
                                                            onnx.TensorProto.FLOAT, None))
    exposed = path.with_name(f"{path.stem}-exposed.onnx")
    onnx.save(model, str(exposed))
    return ort_session(exposed).run([node.output[0]], {"input": inputs})[0]


def _mean_shift(float_path: Path, quantized: Path, node: str, inputs: np.ndarray) -> float:
    """Mean over output channels of |mean over samples and positions of (int8 - float)|."""
    shift = _output_of(quantized, node, inputs) - _output_of(float_path, node, inputs)
    return float(np.abs(shift.mean(axis=(0, 2, 3))).mean())


def test_bias_correction_lowers_the_mean_output_shift_of_a_quantized_layer(tmp_path):
    torch.manual_seed(0)
    convs = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    with torch.no_grad():  # one wide channel: one scale per tensor rounds the rest coarsely
        convs[0].weight[0] *= 40
    float_path = _export(convs, tmp_path / "convs.onnx", (1, 3, 10, 10))
    rng = np.random.default_rng(0)
    inputs = (rng.standard_normal((96, 3, 10, 10)) + 2.0).astype(np.float32)  # mean far from 0
    calibration = TensorDataset(torch.from_numpy(inputs[:64]))
    plain = quantize_onnx(float_path, tmp_path / "plain.onnx", "static", calibration,
                          per_channel=False)
    corrected = quantize_onnx(float_path, tmp_path / "corrected.onnx", "static", calibration,
                              per_channel=False)
    result = correct_bias(corrected, float_path,
                          calibration_batches(float_path, calibration))
    assert result.corrected == ["/0/Conv", "/2/Conv"] and result.mean_shift > 0
    held_out = inputs[64:]
    before = _mean_shift(float_path, plain, "/0/Conv", held_out)
    after = _mean_shift(float_path, corrected, "/0/Conv", held_out)
    assert after < 0.5 * before, (before, after)
    reference = run_onnx(float_path, held_out)
    assert cosine(reference, run_onnx(corrected, held_out)) >= \
        cosine(reference, run_onnx(plain, held_out)) - 1e-4


def test_equalization_keeps_the_function_and_evens_the_channel_ranges(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                        nn.ReLU(), nn.Conv2d(8, 4, 1))
    with torch.no_grad():  # channel ranges 1000x apart, as depthwise convolutions often have
        net[2].weight.mul_(torch.logspace(-1.5, 1.5, 8).reshape(8, 1, 1, 1))
    path = _export(net, tmp_path / "dw.onnx", (1, 3, 12, 12))
    model = onnx.load(str(path))
    depthwise = next(t for t in model.graph.initializer if t.dims[:2] == [8, 1])

    def spread(tensor: onnx.TensorProto) -> float:
        ranges = np.abs(numpy_helper.to_array(tensor)).reshape(8, -1).max(axis=1)
        return float(ranges.max() / ranges.min())

    before = spread(depthwise)
    assert equalize(model) == 2
    after = spread(next(t for t in model.graph.initializer if t.name == depthwise.name))
    assert after < before / 10, (before, after)
    onnx.save(model, str(tmp_path / "equalized.onnx"))
    inputs = np.random.default_rng(0).standard_normal((16, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(tmp_path / "equalized.onnx", inputs),
                               run_onnx(path, inputs), rtol=1e-4, atol=1e-4)


def test_auto_calibration_picks_a_range_per_tensor_with_less_error_than_minmax(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                        nn.Linear(64, 8))
    path = _export(net, tmp_path / "mlp.onnx", (1, 16))
    rng = np.random.default_rng(0)
    inputs = rng.standard_t(2, (1024, 16)).astype(np.float32)  # heavy tails, as activations
    calibration = TensorDataset(torch.from_numpy(inputs[:512]))
    prepared: list[str] = []
    auto = quantize_onnx(path, tmp_path / "auto.onnx", "static", calibration,
                         calibrate_method="auto", prepared=prepared)
    minmax = quantize_onnx(path, tmp_path / "minmax.onnx", "static", calibration)
    [said] = [line for line in prepared if line.startswith("calibration auto")]
    assert said.count(",") >= 1, said  # more than one kind of range was chosen
    held_out = inputs[512:]
    reference = run_onnx(path, held_out)

    def error(quantized: Path) -> float:
        return float(((run_onnx(quantized, held_out) - reference) ** 2).mean())

    assert error(auto) < error(minmax), (error(auto), error(minmax))


class _Block(nn.Module):
    """LayerNorm feeding two linear layers, one input channel 100x wider than the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(32)
        self.query, self.value = nn.Linear(32, 32), nn.Linear(32, 32)
        with torch.no_grad():
            self.norm.weight[3] = 100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(x)
        return self.query(hidden) * self.value(hidden)


def test_smoothing_keeps_the_function_and_makes_static_int8_closer(tmp_path):
    torch.manual_seed(0)
    path = _export(_Block(), tmp_path / "block.onnx", (1, 6, 32))
    inputs = np.random.default_rng(0).standard_normal((64, 6, 32)).astype(np.float32)
    calibration = TensorDataset(torch.from_numpy(inputs[:32]))
    model = onnx.load(str(path))
    smoothed_ = smooth(model, path, 0.5, calibration_batches(path, calibration))
    assert (smoothed_.matmuls, smoothed_.folded, smoothed_.added) == (2, 1, [])
    smoothed = tmp_path / "smoothed.onnx"
    onnx.save(model, str(smoothed))
    reference = run_onnx(path, inputs)
    np.testing.assert_allclose(run_onnx(smoothed, inputs), reference, rtol=1e-3, atol=1e-3)
    plain = quantize_onnx(path, tmp_path / "plain-int8.onnx", "static", calibration)
    better = quantize_onnx(smoothed, tmp_path / "smooth-int8.onnx", "static", calibration)
    assert cosine(reference, run_onnx(better, inputs)) > cosine(reference,
                                                                 run_onnx(plain, inputs))


@pytest.mark.parametrize("opset", [11])
def test_a_cnn_with_weights_in_constant_nodes_at_an_old_opset_quantizes_static(tmp_path, opset):
    """Weights in Constant nodes (paddle2onnx writes them so) at opset 11: the repair step
    moves them out and raises the opset, and static int8 keeps the outputs."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    path = _export(cnn, tmp_path / "exported.onnx", (1, 1, 28, 28), opset=opset)
    model = weights_into_constants(onnx.load(str(path)))
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "cnn.onnx"))
    assert model.opset_import[0].version == opset
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).random((64, 1, 28, 28),
                                                                     dtype=np.float32))
    (tmp_path / "r.yaml").write_text(
        "schema_version: 1\nmodel: {path: cnn.onnx}\nplan: {defaults: {weight_bits: int8}}\n"
        "data: {source: arrays, path: x.npz, calibration_samples: 32, test_fraction: 0.5}\n"
        "train: {epochs: 0}\nexport: {latency_repeats: 2, latency_batch: 8}\n")
    report = list(run_recipe_file(tmp_path / "r.yaml", tmp_path / "out",
                                  CancelToken()))[-1].report
    stage = report["stages"]["quantize"]
    assert stage["mode"] == "static"
    assert any("Moved" in step for step in report["stages"]["repair"]["steps"])
    assert report["compressed"]["agreement"]["cosine"] >= 0.99
