"""The engine end to end: recipes really make the exported model smaller, stay reproducible,
and a cancelled job stops within one batch and leaves the original model untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from studio.cli.main import main
from studio.core.engine.run import REPORT_FILE, run_recipe, run_workspace
from studio.core.export.measure import count_ops
from studio.core.jobs import CancelToken, JobCancelled, Progress, Result
from studio.core.plan.recipe import parse_recipe
from studio.core.resources import resource_path
from studio.core.workspace import open_recipe_workspace


def _report(events: list) -> dict:
    results = [e for e in events if isinstance(e, Result)]
    assert len(results) == 1 and events[-1] is results[0]
    return results[0].report


def test_int8_recipe_from_the_cli_writes_a_smaller_integer_model(tmp_path: Path,
                                                                   capsys) -> None:
    recipe = resource_path("recipes", "demo-int8.yaml")
    assert main(["run", str(recipe), "--out", str(tmp_path), "--jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["event"] == "result"
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert report == lines[-1]["report"]
    base, comp = report["baseline"], report["compressed"]
    assert comp["onnx_bytes"] < 0.3 * base["onnx_bytes"]
    assert base["metric"]["value"] - comp["metric"]["value"] < 0.01
    assert comp["parity"]["top1_agreement"] > 0.97
    ops = count_ops(tmp_path / "model.onnx")
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    assert set(base["latency_ms"]) == {"batch_1", "batch_64"}
    assert all(v > 0 for v in comp["latency_ms"].values())


def test_structured_kd_is_reproducible_and_shrinks_macs(tmp_path: Path,
                                                        training_recipe: str) -> None:
    recipe = parse_recipe(training_recipe)
    reports, digests = [], []
    for run in ("a", "b"):
        out = tmp_path / run
        reports.append(_report(list(run_recipe(recipe, None, out, CancelToken()))))
        digests.append(hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest())
    first, second = reports
    assert first["compressed"]["macs"] < 0.35 * first["baseline"]["macs"]
    assert first["compressed"]["params"] < 0.3 * first["baseline"]["params"]
    assert first["stages"]["recover"]["kind"] == "distill"
    assert first["compressed"]["metric"] == second["compressed"]["metric"]
    assert first["stages"]["recover"] == second["stages"]["recover"]
    assert digests[0] == digests[1]
    assert first["compressed"]["parity"]["max_abs_diff"] < 1e-3


def test_cancel_stops_within_one_batch_and_keeps_the_original(tmp_path: Path,
                                                              training_recipe: str) -> None:
    recipe = parse_recipe(training_recipe)
    workspace = open_recipe_workspace(recipe, None)
    before = {k: v.clone() for k, v in workspace.loaded.module.state_dict().items()}
    token = CancelToken()
    seen: list[Progress] = []
    with pytest.raises(JobCancelled):
        for event in run_workspace(workspace, recipe, tmp_path, token):
            if isinstance(event, Progress):
                seen.append(event)
                if event.done == 2:
                    token.cancel()
    assert [p.done for p in seen] == [1, 2]  # no batch ran after the cancel
    assert not (tmp_path / REPORT_FILE).exists()
    after = workspace.loaded.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_qat_recipe_exports_integer_convolutions(tmp_path: Path) -> None:
    text = resource_path("recipes", "demo-qat-mixed.yaml").read_text()
    text = text.replace("data: {source: demo, calibration_samples: 256}",
                        "data: {source: demo, calibration_samples: 64, train_samples: 256}")
    text = text.replace("epochs: 2", "epochs: 1") + "export: {latency_repeats: 2}\n"
    report = _report(list(run_recipe(parse_recipe(text), None, tmp_path, CancelToken())))
    ops = count_ops(tmp_path / "model.onnx")
    assert report["stages"]["quantize"]["mode"] == "qat-static"
    assert ops.get("DequantizeLinear", 0) >= 5
    assert report["compressed"]["onnx_bytes"] < 0.3 * report["baseline"]["onnx_bytes"]
    assert any("int8" in note for note in report["notes"])  # 4-bit weights are stored as int8


def test_gradual_unstructured_pruning_reaches_its_target_and_says_zeros_are_dense(
        tmp_path: Path) -> None:
    recipe = parse_recipe("""\
schema_version: 1
model: {path: demo}
plan:
  layers:
    res: {sparsity: 0.6}
data: {source: demo, train_samples: 512}
train: {epochs: 1, lr: 0.001, seed: 0}
prune: {schedule: agp, agp_steps: 4}
export: {latency_repeats: 2, latency_batch: 8}
""")
    report = _report(list(run_recipe(recipe, None, tmp_path, CancelToken())))
    layers = report["stages"]["prune"]["unstructured"]
    assert layers["schedule"]["kind"] == "agp"
    res_weights = 2 * 64 * 64 * 9
    removed = report["baseline"]["nonzero_params"] - report["compressed"]["nonzero_params"]
    assert removed == pytest.approx(0.6 * res_weights, rel=0.02)
    assert report["compressed"]["params"] == report["baseline"]["params"]
    assert any("stored densely" in note for note in report["notes"])
