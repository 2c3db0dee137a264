"""Sensitivity sweeps score the recipe's data with its metric, so they work without labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from studio.core.data.sources import load_task
from studio.core.engine.sensitivity import sensitivity_job, sensitivity_workspace
from studio.core.errors import StudioError
from studio.core.jobs import CancelToken, Log, Result
from studio.core.plan.recipe import Recipe, read_recipe
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


def _one_value_recipe(folder: Path, metric: str) -> Recipe:
    """A pickled module giving one value per sample ([N, 1]) beside unlabelled features."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)).eval()
    torch.save(model, folder / "one.pt")
    np.savez(folder / "x.npz", x=np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32))
    return Recipe.model_validate({
        "schema_version": 1, "model": {"path": "one.pt"}, "example_input": {"shape": [1, 8]},
        "data": {"source": "arrays", "path": "x.npz", "metric": metric}})


def test_auto_on_one_value_per_sample_sweeps_mse(tmp_path: Path) -> None:
    events = list(sensitivity_job(_one_value_recipe(tmp_path, "auto"), tmp_path, CancelToken(),
                                  (0.9,), (), layers=["0"], trust=True))
    report = events[-1].report
    assert report["metric"] == "mse" and report["higher_is_better"] is False
    assert report["sparsity"]["drop"][0][0] > 0  # cosine of one value would read no loss
    said = [e.message for e in events if isinstance(e, Log)]
    assert any("metric mse (auto: unlabelled data, and output 'output' [N, 1]" in m
               for m in said)


def test_cosine_on_one_value_per_sample_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StudioError, match=r"sensitivity: metric cosine .* one value per sample"):
        list(sensitivity_job(_one_value_recipe(tmp_path, "cosine"), tmp_path, CancelToken(),
                             (0.9,), (), layers=["0"], trust=True))
