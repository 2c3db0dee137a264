"""Autosave of the plan, so a crash or a killed window loses at most a few seconds of edits.

A saved project autosaves beside its manifest (``project.autosave.yaml``); a model not saved as a
project yet autosaves into a recovery folder, keyed by the model's path. Saving the project
removes the autosave; opening finds a newer autosave and offers it back.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from studio.core.atomic import write_text_atomic
from studio.core.errors import StudioError
from studio.core.plan.recipe import Recipe, dump_recipe, read_recipe
from studio.core.workspace import Workspace

AUTOSAVE_FILE = "project.autosave.yaml"


def autosave_path(workspace: Workspace, manifest: Path | None, recovery_dir: Path) -> Path:
    if manifest is not None:
        return manifest.with_name(AUTOSAVE_FILE)
    key = hashlib.sha1(workspace.model_path.encode("utf-8")).hexdigest()[:16]
    return recovery_dir / f"{key}.yaml"


def write_autosave(workspace: Workspace, path: Path) -> None:
    write_text_atomic(path, dump_recipe(workspace.to_recipe(base=path.parent)))


def pending_autosave(workspace: Workspace, manifest: Path | None,
                     recovery_dir: Path) -> Recipe | None:
    """The autosaved recipe if there is one newer than the project (None if none or damaged)."""
    path = autosave_path(workspace, manifest, recovery_dir)
    if not path.is_file():
        return None
    if manifest is not None and manifest.is_file() \
            and path.stat().st_mtime < manifest.stat().st_mtime:
        return None
    try:
        return read_recipe(path)
    except StudioError:
        return None


def clear_autosave(workspace: Workspace, manifest: Path | None, recovery_dir: Path) -> None:
    for path in {autosave_path(workspace, manifest, recovery_dir),
                 autosave_path(workspace, None, recovery_dir)}:
        path.unlink(missing_ok=True)
