"""Sensitivity sweeps score the recipe's data with its metric, so they work without labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from studio.core.data.sources import load_task
from studio.core.engine.sensitivity import sensitivity_job, sensitivity_workspace
from studio.core.jobs import CancelToken, Result
from studio.core.plan.recipe import read_recipe
from studio.core.plan.stages import DataSection
from studio.core.resources import resource_path
from studio.core.workspace import open_workspace


def test_unlabelled_sweep_measures_lost_agreement() -> None:
    task = load_task(DataSection(labelled=False, metric="mse"))
    events = list(sensitivity_workspace(open_workspace("demo"), CancelToken(), (0.9,),
                                        ("int2",), subset=64, layers=["res.conv2"], task=task))
    report = events[-1].report
    assert isinstance(events[-1], Result)
    assert report["metric"] == "mse" and report["higher_is_better"] is False
    assert report["baseline"] == pytest.approx(0.0, abs=1e-10)
    # the drop in MSE is the error itself, positive: 90% of a layer gone changes the outputs
    assert report["sparsity"]["drop"][0][0] > 0.01 and report["bits"]["drop"][0][0] > 0


def test_sensitivity_job_reads_the_recipes_data(tmp_path: Path) -> None:
    with np.load(resource_path("demo", "mnist-5k.npz")) as digits:
        np.savez(tmp_path / "d.npz", images=digits["images"][:40])
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text("schema_version: 1\nmodel: {path: demo}\n"
                           "example_input: {shape: [1, 1, 28, 28]}\n"
                           "data: {source: arrays, path: d.npz, test_fraction: 0.5}\n")
    events = list(sensitivity_job(read_recipe(recipe_path), tmp_path, CancelToken(), (0.5,),
                                  (), layers=["res.conv2"]))
    report = events[-1].report
    assert report["metric"] == "cosine" and report["subset"] == 20
    assert report["baseline"] == pytest.approx(1.0, abs=1e-6)
