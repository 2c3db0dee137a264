"""Accuracy-aware quantization, the int8 path the plan's "int8" takes and the options around
onnxruntime's pass, through whole runs on real ONNX files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from studio.core.data.metrics import cosine
from studio.core.engine.run import run_recipe_file
from studio.core.export.measure import run_onnx
from studio.core.jobs import CancelToken

RECIPE = """\
schema_version: 1
model: {{path: mlp.onnx}}
plan: {{defaults: {{weight_bits: int8, act_bits: int8}}}}
data: {{source: arrays, path: mlp.npz, calibration_samples: 64, test_fraction: 0.25}}
train: {{epochs: 0}}
quantize: {quantize}
export: {{latency_repeats: 2, latency_batch: 8}}
"""


def _mlp_with_planted_faults(folder: Path) -> None:
    """Four linear layers; the second holds a weight of 1000 and the third one of 3, each met
    only by a channel the layer before always leaves at zero. Per-channel int8 then rounds the
    rest of the second layer's weights to zero (output wrecked) and blurs the third's."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                        nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))
    with torch.no_grad():
        for dead, reader, weight in ((0, 2, 1000.0), (2, 4, 3.0)):
            net[dead].weight[1] = 0
            net[dead].bias[1] = -1
            net[reader].weight[:, 1] = weight
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.randn(1, 16),), str(folder / "mlp.onnx"),
                          dynamo=False, input_names=["input"], output_names=["out"],
                          dynamic_axes={"input": {0: "n"}, "out": {0: "n"}})
    np.savez(folder / "mlp.npz",
             x=np.random.default_rng(0).standard_normal((256, 16)).astype(np.float32))


def _run(folder: Path, quantize: str) -> dict:
    (folder / "r.yaml").write_text(RECIPE.format(quantize=quantize))
    return list(run_recipe_file(folder / "r.yaml", folder / "out", CancelToken()))[-1].report


def test_accuracy_aware_meets_a_budget_plain_int8_misses_with_the_fewest_float_layers(tmp_path):
    _mlp_with_planted_faults(tmp_path)
    report = _run(tmp_path, "{max_drop: 0.0001}")
    aware = report["stages"]["quantize"]["accuracy_aware"]
    assert aware["all_int8_drop"] > aware["allowed_drop"] == 0.0001  # plain int8 misses
    assert aware["met"] and aware["drop"] <= 0.0001
    assert aware["float_layers"] == ["/2/Gemm", "/4/Gemm"]  # the two planted faults
    tried_and_met = [t for t in aware["trials"] if t["drop"] <= 0.0001]
    assert min(len(t["float_layers"]) for t in tried_and_met) == 2
    assert all(len(t["float_layers"]) <= 1 for t in aware["trials"]
               if t["drop"] > 0.0001)  # every smaller set was tried and missed
    assert report["compressed"]["agreement"]["cosine"] >= 1 - 0.0001
    assert "bytes_vs_all_int8" in aware and "latency_vs_all_int8" in aware
    [note] = [n for n in report["notes"] if n.startswith("Accuracy-aware")]
    assert "2 layer(s) kept float ('/2/Gemm', '/4/Gemm')" in note
    decisions = report["stages"]["quantize"]["decisions"]
    assert decisions["/2/Gemm"].startswith("float (accuracy-aware")


def test_accuracy_aware_keeps_and_saves_the_best_file_when_the_goal_cannot_be_met(tmp_path):
    _mlp_with_planted_faults(tmp_path)
    report = _run(tmp_path, "{max_drop: 0.0, max_float_layers: 1}")
    aware = report["stages"]["quantize"]["accuracy_aware"]
    assert not aware["met"]
    best = min(aware["trials"], key=lambda t: t["drop"])
    assert aware["float_layers"] == best["float_layers"] == ["/2/Gemm"]
    assert aware["drop"] < aware["all_int8_drop"] / 10
    saved = Path(report["paths"]["model"])
    inputs = np.load(tmp_path / "mlp.npz")["x"]
    splits = json.loads(Path(report["paths"]["splits"]).read_text())
    test = inputs[splits["test"]] if "test" in splits else inputs
    assert cosine(run_onnx(tmp_path / "mlp.onnx", test), run_onnx(saved, test)) > 0.999
    [note] = [n for n in report["notes"] if n.startswith("Accuracy-aware")]
    assert "no trial met" in note and "kept the best found" in note


def test_int8_without_act_bits_is_static_on_convolutions_and_forced_dynamic_says_its_cost(
        tmp_path, quick_onnx_recipe, outlier_convs_recipe):
    recipe = quick_onnx_recipe(tmp_path)  # the demo CNN as an ONNX file
    recipe.write_text(recipe.read_text().replace("weight_bits: int8, act_bits: int8",
                                                 "weight_bits: int8"))
    report = list(run_recipe_file(recipe, tmp_path / "auto", CancelToken()))[-1].report
    stage = report["stages"]["quantize"]
    assert stage["mode"] == "static" and stage["int8_path"] == "auto"
    assert stage["check"]["cosine"] > 0.99 and stage["check"]["latency_ratio"] < 1
    assert any("quantized static (activations too)" in n for n in report["notes"])

    recipe.write_text(recipe.read_text() + "quantize: {int8_path: dynamic}\n")
    report = list(run_recipe_file(recipe, tmp_path / "dynamic", CancelToken()))[-1].report
    stage = report["stages"]["quantize"]
    assert stage["mode"] == "dynamic" and stage["check"]["latency_ratio"] > 1.5
    [note] = [n for n in report["notes"] if "forced by quantize.int8_path" in n]
    assert f"{stage['check']['latency_ratio']:.2f}x the float file's latency" in note

    wrecked = outlier_convs_recipe(tmp_path)  # forces dynamic int8 on convolutions it wrecks
    report = list(run_recipe_file(wrecked, tmp_path / "wrecked", CancelToken()))[-1].report
    assert report["stages"]["quantize"]["check"]["cosine"] < 0.95
    assert any("forced by quantize.int8_path" in n and "output cosine 0." in n
               for n in report["notes"])


def test_equalization_auto_calibration_and_bias_correction_run_together(tmp_path,
                                                                         quick_onnx_recipe):
    recipe = quick_onnx_recipe(tmp_path)
    recipe.write_text(recipe.read_text() + "quantize: {equalize: true, calibration: auto, "
                      "bias_correction: true}\n")
    report = list(run_recipe_file(recipe, tmp_path / "out", CancelToken()))[-1].report
    stage = report["stages"]["quantize"]
    assert stage["equalized_pairs"] == 3  # stem -> block1 -> (pool) block2 -> res.conv1
    assert stage["bias_correction"]["corrected"] == 6 and not stage["bias_correction"]["skipped"]
    assert any(line.startswith("calibration auto") for line in stage["prepared"])
    assert report["compressed"]["agreement"]["cosine"] > 0.99
