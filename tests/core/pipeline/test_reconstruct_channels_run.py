"""A run that cuts channels re-fits the layers after the cut to the uncompressed model
(``prune.reconstruct``, on by default) before anything else: without training, the demo with
half its channels cut comes back from chance to most of its accuracy, the exported file scores
what torch does, and ``reconstruct: false`` leaves the bare cut."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.core.engine.run import run_workspace
from studio.core.jobs import CancelToken, Log, Result
from studio.core.plan.recipe import parse_recipe
from studio.core.workspace import open_recipe_workspace

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RECIPE = """\
schema_version: 1
model: {path: demo}
plan:
  defaults: {sparsity: 0.5, granularity: channels}
  layers:
    head: {exclude: true}
data: {source: demo, calibration_samples: 128}
train: {epochs: 0}
prune: {reconstruct: %s}
export: {latency_repeats: 1, latency_batch: 8}
"""


def _run(tmp_path: Path, reconstruct: bool) -> tuple[dict, list[str]]:
    recipe = parse_recipe(RECIPE % str(reconstruct).lower())
    workspace = open_recipe_workspace(recipe, tmp_path)
    events = list(run_workspace(workspace, recipe, tmp_path / str(reconstruct),
                                CancelToken()))
    assert isinstance(events[-1], Result)
    return events[-1].report, [e.message for e in events if isinstance(e, Log)]


def test_a_channel_cut_is_refitted_before_anything_else(tmp_path: Path,
                                                        one_torch_thread: None) -> None:
    bare, _ = _run(tmp_path, False)
    refitted, logs = _run(tmp_path, True)
    assert "reconstruct_channels" not in bare["stages"]["prune"]
    report = refitted["stages"]["prune"]["reconstruct_channels"]
    assert report["samples"] == 128
    assert set(report["layers"]) == {"block1.0", "block2.0", "res.conv1.0",
                                     "res.conv2", "head.2"}
    assert any(line.startswith("Reconstruction: re-fitted 5 layers") for line in logs)
    without = bare["compressed"]["metric"]["value"]
    with_refit = refitted["compressed"]["metric"]["value"]
    assert without < 0.5 and with_refit > 0.9, (without, with_refit)
    # the same shapes: the re-fit changes weights, never what the cut removed
    assert refitted["compressed"]["params"] == bare["compressed"]["params"]
