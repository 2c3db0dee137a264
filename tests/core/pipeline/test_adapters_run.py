"""Adapters in a run on the demo: recipes that cannot work are refused with the reason (no
training, QAT beside adapters, gradual pruning of a frozen base)."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.core.engine.run import run_workspace
from studio.core.errors import RecipeError, StudioError
from studio.core.jobs import CancelToken
from studio.core.plan.recipe import parse_recipe
from studio.core.workspace import open_recipe_workspace

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RECIPE = """\
schema_version: 1
model: {path: demo}
plan:
  defaults: {sparsity: 0.5, adapter_rank: 2}
data: {source: demo, calibration_samples: 16, train_samples: 32}
train: {epochs: 1, batch_size: 16}
adapters: {}
export: {latency_repeats: 1, latency_batch: 4}
"""


def test_adapters_without_training_are_refused_at_their_line():
    with pytest.raises(RecipeError, match=r"adapters.*train\.epochs is 0"):
        parse_recipe(RECIPE.replace("epochs: 1", "epochs: 0"))


@pytest.mark.parametrize(("extra", "message"), [
    ("quantize: {qat: true}\n", "adapters and quantize.qat both train"),
    ("prune: {schedule: agp}\n", "gradual \\(AGP\\) pruning"),
])
def test_adapters_refuse_what_needs_the_base_to_train(tmp_path: Path, extra, message):
    recipe = parse_recipe(RECIPE + extra)
    workspace = open_recipe_workspace(recipe, tmp_path)
    with pytest.raises(StudioError, match=message):
        list(run_workspace(workspace, recipe, tmp_path / "out", CancelToken()))
    assert not (tmp_path / "out").exists()
