"""Carry out a recipe: open the model it names, then run the pipeline
(:mod:`studio.core.pipeline.pipeline`) as a job that yields events and stops within one batch
when cancelled. The job works on a copy of the model, so the original (and the user's file) is
never touched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from studio.core.errors import StudioError
from studio.core.jobs import CancelToken, Event
from studio.core.pipeline.pipeline import BASELINE_FILE, MODEL_FILE, REPORT_FILE, run_pipeline
from studio.core.plan.recipe import Recipe, read_recipe
from studio.core.plan.stages import TrainSection
from studio.core.workspace import Workspace, open_recipe_workspace

__all__ = ["BASELINE_FILE", "MODEL_FILE", "REPORT_FILE", "run_recipe", "run_recipe_file",
           "run_workspace"]


def run_recipe_file(path: Path, out_dir: Path, token: CancelToken, trust: bool = False,
                    device: str | None = None) -> Iterator[Event]:
    path = Path(path)
    recipe = read_recipe(path)
    yield from run_recipe(recipe, path.parent, Path(out_dir), token, trust, device, str(path))


def run_recipe(recipe: Recipe, base_dir: Path | None, out_dir: Path, token: CancelToken,
               trust: bool = False, device: str | None = None,
               source: str = "recipe", trust_data: bool | None = None,
               architecture: str | None = None) -> Iterator[Event]:
    """Open the model the recipe names, then :func:`run_workspace`. ``trust`` is for the model
    file (unpickling, an architecture outside the registry), ``trust_data`` for a function data
    source; None: the same as ``trust`` (the CLI's one ``--trust`` for the whole recipe).
    ``architecture``: one outside the registry the user allowed by name."""
    if recipe.model is None:
        raise StudioError(f"{source}: the recipe names no model (add model: {{path: ...}})")
    workspace = open_recipe_workspace(recipe, base_dir, trust, source, architecture)
    yield from run_workspace(workspace, recipe, out_dir, token, device, source, base_dir,
                             trust if trust_data is None else trust_data, trust_models=trust)


def run_workspace(workspace: Workspace, recipe: Recipe, out_dir: Path, token: CancelToken,
                  device: str | None = None, source: str = "recipe",
                  base_dir: Path | None = None, trust: bool = False,
                  trust_models: bool = False) -> Iterator[Event]:
    """The whole job on an open model and its plan (the recipe gives the settings; ``device``
    overrides ``train.device``). ``base_dir`` is where the recipe's data paths start;
    ``trust`` lets a ``function`` data source run; ``trust_models`` lets other model files
    the recipe names (distillation teachers) run code, as ``trust`` in :func:`run_recipe`."""
    if device and workspace.loaded.capabilities.can_train:  # nothing else trains
        train = recipe.section(TrainSection).model_copy(update={"device": device})
        recipe = recipe.model_copy(update={"train": train})
    yield from run_pipeline(workspace, recipe, Path(out_dir), token, source, base_dir, trust,
                            trust_models)
