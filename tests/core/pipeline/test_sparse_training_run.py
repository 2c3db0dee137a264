"""prune.schedule: rigl in a run on the demo: the report says how the mask moved, and the
exported model holds the sparsity it was asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.core.engine.run import run_workspace
from studio.core.jobs import CancelToken, Result
from studio.core.plan.recipe import parse_recipe
from studio.core.workspace import open_recipe_workspace

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RECIPE = """\
schema_version: 1
model: {path: demo}
plan:
  defaults: {sparsity: 0.6}
data: {source: demo, calibration_samples: 16, train_samples: 256}
train: {epochs: 1, batch_size: 16}
prune: {schedule: rigl, agp_steps: 4}
export: {latency_repeats: 1, latency_batch: 4}
"""


def test_rigl_keeps_the_sparsity_and_reports_the_moves(tmp_path: Path):
    recipe = parse_recipe(RECIPE)
    workspace = open_recipe_workspace(recipe, tmp_path)
    events = list(run_workspace(workspace, recipe, tmp_path / "out", CancelToken()))
    report = next(e for e in events if isinstance(e, Result)).report
    schedule = report["stages"]["prune"]["unstructured"]["schedule"]
    assert schedule["kind"] == "rigl" and (schedule["ramp_steps"], schedule["regrow_until"]) \
        == (8, 12)
    assert schedule["regrow_steps"] == 4 and schedule["moved"] > 0
    compressed = report["compressed"]
    pruned_share = 1 - compressed["nonzero_params"] / compressed["params"]
    assert pruned_share > 0.5  # 60% of the conv/linear weights; batch norms stay whole
