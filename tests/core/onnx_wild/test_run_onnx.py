"""Recipes on ONNX-only models: repair, unstructured pruning of the weight initializers,
onnxruntime quantization and the report, with no torch module anywhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from studio.cli.main import main
from studio.core.engine.run import REPORT_FILE, run_recipe
from studio.core.errors import InputError, StudioError
from studio.core.jobs import CancelToken, Result
from studio.core.models.onnx_repair import default_opset
from studio.core.plan.recipe import parse_recipe
from studio.core.workspace import open_workspace
from tests.core.onnx_wild.conftest import TINY_SHAPE, TinyCNN, export_legacy

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PRUNED = ("/res/conv1/conv1.0/Conv", "/res/conv2/Conv")
DEMO_RECIPE = """\
schema_version: 1
model: {path: demo-wild.onnx}
plan:
  defaults: {weight_bits: int8, act_bits: int8}
  layers:
    res: {sparsity: 0.6}
    block2: {sparsity: 0.5, granularity: channels}
    head.2: {exclude: true}
data: {source: demo, calibration_samples: 64}
train: {epochs: 0}
export: {latency_repeats: 2, latency_batch: 8}
"""


def _int8_weights(path: Path) -> dict[str, np.ndarray]:
    """The int8 weight each node reads through a DequantizeLinear, by node name."""
    model = onnx.load(str(path))
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dequantized = {n.output[0]: values[n.input[0]] for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in values
                   and values[n.input[0]].dtype == np.int8}
    return {n.name: dequantized[n.input[1]] for n in model.graph.node
            if len(n.input) > 1 and n.input[1] in dequantized}


def test_tree_of_a_constant_weight_file_matches_its_initializer_twin(wild_demo):
    wild = open_workspace(str(wild_demo)).tree
    twin = open_workspace(str(wild_demo.parent / "exported.onnx")).tree
    assert wild.names() == twin.names()
    assert [(n.params, n.weight_params, n.macs) for n in wild] == \
        [(n.params, n.weight_params, n.macs) for n in twin]
    conv = wild.get("/res/conv2/Conv")
    assert conv.params == 64 * 64 * 9 + 64 and conv.prunable and conv.weight_bits == 32
    assert wild.root.total_macs > 25_000_000  # per sample, though the batch dim is free


def test_recipe_on_an_onnx_file_from_the_cli(wild_demo, tmp_path, capsys):
    shutil.copy(wild_demo, tmp_path / "demo-wild.onnx")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(DEMO_RECIPE)
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--out", str(out), "--jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    report = json.loads((out / REPORT_FILE).read_text())
    assert lines[-1]["event"] == "result" and lines[-1]["report"] == report
    logs = [line["message"] for line in lines if line["event"] == "log"]
    assert any("Repair: Upgraded opset 11 → 13" in message for message in logs)

    assert report["source_format"] == "onnx"
    assert len(report["stages"]["repair"]["steps"]) == 2
    baseline_file = onnx.load(str(out / "baseline.onnx"))
    assert default_opset(baseline_file) == 13
    assert not [n for n in baseline_file.graph.node if n.op_type == "Constant"]

    base, comp = report["baseline"], report["compressed"]
    assert base["metric"]["name"] == "accuracy" and base["metric"]["value"] > 0.98
    assert base["parity"]["max_abs_diff"] < 1e-4  # the repair kept what the file computes
    assert base["metric"]["value"] - comp["metric"]["value"] < 0.02
    assert comp["agreement"]["top1_agreement"] > 0.97

    pruned = report["stages"]["prune"]["layers"]
    assert set(pruned) == set(PRUNED)
    assert all(abs(layer["sparsity"] - 0.6) < 0.01 for layer in pruned.values())
    weights = _int8_weights(out / "model.onnx")
    for name in PRUNED:  # the zeros survive quantization into the file
        assert 1 - np.count_nonzero(weights[name]) / weights[name].size >= \
            pruned[name]["sparsity"] > 0.599
    assert "/head/head.2/Gemm" not in weights
    assert report["stages"]["quantize"]["decisions"]["/head/head.2/Gemm"] == "float (excluded)"
    assert report["stages"]["prune"]["structured_skipped"] == ["/block2/block2.0/Conv"]
    assert any("'/block2/block2.0/Conv': channel and N:M pruning need the torch model" in note
               for note in report["notes"])

    removed = 0.6 * 2 * 64 * 64 * 9
    assert abs(base["nonzero_params"] - comp["nonzero_params"] - removed) < 0.01 * removed
    assert comp["params"] == base["params"] and comp["macs"] == base["macs"]
    assert comp["onnx_bytes"] < 0.35 * base["onnx_bytes"]
    assert comp["zip_bytes"] < comp["onnx_bytes"]
    assert set(base["latency_ms"]) == set(comp["latency_ms"]) == {"batch_1", "batch_8"}


def test_fixed_batch_file_with_unlabelled_data(tmp_path):
    """Batch fixed at 1 (as many exporters write it), calibrated and timed at that batch;
    without labels the metric is agreement with the original file's outputs."""
    export_legacy(TinyCNN(), tmp_path / "fixed.onnx", TINY_SHAPE, 11)
    inputs = np.random.default_rng(0).standard_normal((120, *TINY_SHAPE[1:]))
    np.savez(tmp_path / "samples.npz", x=inputs.astype(np.float32))
    recipe = parse_recipe(
        "schema_version: 1\nmodel: {path: fixed.onnx}\n"
        "plan: {defaults: {weight_bits: int8, act_bits: int8, sparsity: 0.3}}\n"
        "data: {source: arrays, path: samples.npz, calibration_samples: 32}\n"
        "export: {latency_repeats: 2}\n")
    events = list(run_recipe(recipe, tmp_path, tmp_path / "out", CancelToken()))
    assert isinstance(events[-1], Result)
    report = events[-1].report
    base, comp = report["baseline"], report["compressed"]
    assert base["metric"]["name"] == "cosine" and base["metric"]["value"] == pytest.approx(1.0)
    assert 0.95 < comp["metric"]["value"] < 1.0
    assert set(base["latency_ms"]) == {"batch_1"}
    assert any("fixes its batch size at 1" in note for note in report["notes"])
    assert len(report["stages"]["prune"]["layers"]) == 4
    assert (tmp_path / "out" / "splits.json").exists()


def test_training_sections_are_refused_before_any_work(wild_demo, tmp_path):
    recipe = parse_recipe(DEMO_RECIPE.replace("train: {epochs: 0}", (
        "train: {epochs: 2}\ndistill: {temperature: 2.0}\nquantize: {qat: true}\n"
        "prune: {importance: taylor}")).replace("demo-wild.onnx", str(wild_demo)))
    out = tmp_path / "out"
    with pytest.raises(StudioError) as raised:
        list(run_recipe(recipe, None, out, CancelToken()))
    message = str(raised.value)
    for section in ("train.epochs: 2", "distill", "quantize.qat", "prune.importance: taylor"):
        assert section in message
    assert "demo-wild.onnx is an ONNX file" in message and ".safetensors" in message
    assert not out.exists()


def test_data_that_does_not_fit_the_file_names_both_shapes(wild_cnn, tmp_path):
    recipe = parse_recipe(f"schema_version: 1\nmodel: {{path: {wild_cnn}}}\n"
                          "plan: {defaults: {weight_bits: int8, act_bits: int8}}\n"
                          "data: {source: demo}\n")
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"wild\.onnx: its input 'input' has shape "
                                         r"\[batch, 1, 8, 8\].*samples of shape \[1, 28, 28\]"):
        list(run_recipe(recipe, None, out, CancelToken()))
    assert not out.exists()
