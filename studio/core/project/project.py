"""Save and reopen a project: a folder holding ``project.yaml`` (a recipe with the model path
relative to the folder, so the folder can be moved together with its model)."""

from __future__ import annotations

from pathlib import Path

from studio.core.atomic import write_text_atomic
from studio.core.errors import Problem, RecipeError
from studio.core.plan.recipe import dump_recipe, read_recipe
from studio.core.workspace import Workspace, open_recipe_workspace

PROJECT_FILE = "project.yaml"


def project_file(path: str | Path) -> Path:
    """The manifest of a project given as its folder or as the manifest itself."""
    path = Path(path).expanduser()
    return path / PROJECT_FILE if path.is_dir() or not path.suffix else path


def save_project(workspace: Workspace, path: str | Path) -> Path:
    manifest = project_file(path)
    recipe = workspace.to_recipe(base=manifest.parent)
    write_text_atomic(manifest, dump_recipe(recipe))
    return manifest


def load_project(path: str | Path, trust: bool = False,
                 architecture: str | None = None) -> Workspace:
    """Open a project; ``architecture``: the factory the user named or allowed (see
    :func:`~studio.core.workspace.open_recipe_workspace`)."""
    manifest = project_file(path)
    recipe = read_recipe(manifest)
    if recipe.model is None:
        raise RecipeError(str(manifest), [Problem("model", "a project must name its model")])
    return open_recipe_workspace(recipe, manifest.parent, trust, str(manifest), architecture)
