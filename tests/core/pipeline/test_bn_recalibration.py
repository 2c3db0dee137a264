"""Batch-norm re-estimation after pruning: the demo pruned to 70% without fine-tuning recovers
most of its accuracy, the original model's statistics stay as they were, and an ONNX-only
model (no BatchNorm layers to re-estimate) refuses the setting by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from studio.core.engine.run import run_workspace
from studio.core.errors import StudioError
from studio.core.jobs import CancelToken, Result
from studio.core.plan.recipe import parse_recipe
from studio.core.workspace import open_recipe_workspace

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RECIPE = """\
schema_version: 1
model: {path: demo}
plan:
  defaults: {sparsity: 0.7}
data: {source: demo, calibration_samples: 128}
train: {epochs: 0}
prune: {global_unstructured: true, bn_recalibration: %s}
export: {latency_repeats: 1, latency_batch: 8}
"""


def _run(tmp_path: Path, recalibrate: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    recipe = parse_recipe(RECIPE % str(recalibrate).lower())
    workspace = open_recipe_workspace(recipe, tmp_path)
    module = workspace.loaded.module
    assert module is not None
    before = {k: v.clone() for k, v in module.state_dict().items() if "running" in k}
    events = list(run_workspace(workspace, recipe, tmp_path / str(recalibrate), CancelToken()))
    after = {k: v for k, v in module.state_dict().items() if "running" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)  # the original is untouched
    assert isinstance(events[-1], Result)
    return events[-1].report, before


def test_re_estimated_statistics_recover_a_pruned_cnn_without_fine_tuning(tmp_path):
    plain, _ = _run(tmp_path, False)
    recalibrated, _ = _run(tmp_path, True)
    assert "bn_recalibration" not in plain["stages"]
    assert recalibrated["stages"]["bn_recalibration"] == {"layers": 5, "samples": 128}
    assert recalibrated["stages"]["prune"] == plain["stages"]["prune"]  # the same zeros
    without = plain["compressed"]["metric"]["value"]
    with_bn = recalibrated["compressed"]["metric"]["value"]
    assert with_bn > without + 0.03, (without, with_bn)
    assert with_bn > recalibrated["baseline"]["metric"]["value"] - 0.02


def test_an_onnx_model_refuses_the_setting_by_name(tmp_path):
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval(),
                      (torch.randn(1, 1, 28, 28),), str(path), dynamo=False)
    recipe = parse_recipe((RECIPE % "true").replace("path: demo", f"path: {path}"))
    workspace = open_recipe_workspace(recipe, tmp_path)
    with pytest.raises(StudioError, match=r"prune\.bn_recalibration .* need\(s\) its torch"):
        list(run_workspace(workspace, recipe, tmp_path / "out", CancelToken()))
    assert not (tmp_path / "out").exists()
