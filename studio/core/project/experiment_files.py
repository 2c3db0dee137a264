"""What the user does with an experiment's files: export them where they choose, move the
experiment to the project's trash (and bring it back).

Export copies the compressed ONNX file to the path the user picked and puts the compressed torch
weights (``<stem>.safetensors``) and adapters (``<stem>.adapters.safetensors``) beside it when the
run wrote them. An existing file is never replaced unless the caller names it in ``replace``
(the window asks first): :class:`ReplaceRequired` lists the ones in the way, before anything is
written. Each file is copied to a temporary name and renamed, so an interrupted export leaves no
half file under the user's name.

Deleting moves the experiment's folder into ``<project>/.trash/`` (undo moves it back); nothing
the user ran is lost to a slip of the Delete key.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection
from pathlib import Path

from studio.core.errors import ReplaceRequired, StudioError
from studio.core.project.experiments import (
    EXPERIMENTS_DIR,
    Experiment,
    artifact_path,
    experiment_dir,
    experiments_dir,
)
from studio.core.project.studies import SENSITIVITY_FILE

TRASH_DIR = ".trash"
EXPORTED_KINDS = {"onnx": "", "weights": ".safetensors", "adapters": ".adapters.safetensors"}
"""Artifact kind -> the suffix its exported copy gets after the chosen file's stem ("" keeps
the chosen name)."""


def export_targets(project_dir: Path, experiment: Experiment, target: Path
                   ) -> dict[Path, Path]:
    """Source -> destination of each file an export of ``experiment`` to ``target`` writes."""
    target = target if target.suffix.lower() == ".onnx" else target.with_name(
        f"{target.name}.onnx")
    pairs: dict[Path, Path] = {}
    for kind, suffix in EXPORTED_KINDS.items():
        source = artifact_path(project_dir, experiment, kind)
        if source is not None and source.is_file():
            pairs[source] = target.with_name(target.stem + suffix) if suffix else target
    if not pairs or artifact_path(project_dir, experiment, "onnx") not in pairs:
        raise StudioError(f"{experiment.name}: its compressed model file is missing from "
                          f"{experiment_dir(project_dir, experiment.id)}; run the plan again")
    return pairs


def export_experiment(project_dir: Path, experiment: Experiment, target: Path,
                      replace: Collection[Path] = ()) -> list[Path]:
    """Copy the experiment's model files to ``target`` (see the module's docstring); returns
    the files written."""
    pairs = export_targets(project_dir, experiment, target)
    allowed = {path.absolute() for path in replace}
    in_the_way = [dest for dest in pairs.values()
                  if (dest.exists() or dest.is_symlink()) and dest.absolute() not in allowed]
    if in_the_way:
        raise ReplaceRequired(in_the_way)
    for source, dest in pairs.items():
        temporary = dest.with_name(f".{dest.name}.tmp")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, temporary)
            os.replace(temporary, dest)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise StudioError(f"cannot write {dest}: {error.strerror or error}") from error
    return list(pairs.values())


def trash_dir(project_dir: Path) -> Path:
    return Path(project_dir) / TRASH_DIR


def move_to_trash(project_dir: Path, experiment_id: str) -> Path:
    """Move an experiment's folder into the project's trash; returns where it went."""
    return _move(experiment_dir(project_dir, experiment_id),
                 trash_dir(project_dir) / experiment_id)


def restore_from_trash(project_dir: Path, experiment_id: str) -> Path:
    """Move a trashed experiment's folder back into the history."""
    return _move(trash_dir(project_dir) / experiment_id,
                 experiments_dir(project_dir) / experiment_id)


def _move(source: Path, dest: Path) -> Path:
    if not source.is_dir():
        raise StudioError(f"{source}: no such experiment folder")
    if dest.exists():
        raise StudioError(f"{dest} already exists; move it away first")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        source.rename(dest)
    except OSError as error:
        raise StudioError(f"cannot move {source} to {dest}: {error.strerror or error}") from error
    return dest


def move_project_history(source: Path, dest: Path) -> None:
    """Move a scratch project's experiments, trash and studies into the folder it was saved
    as, then remove the scratch folder (its manifest and autosave stay behind otherwise).
    A name already taken in ``dest`` is left where it was."""
    for name in (EXPERIMENTS_DIR, TRASH_DIR, SENSITIVITY_FILE):
        if (source / name).exists() and not (dest / name).exists():
            _move_any(source / name, dest / name)
    if not any((source / name).exists() for name in (EXPERIMENTS_DIR, TRASH_DIR)):
        shutil.rmtree(source, ignore_errors=True)


def _move_any(source: Path, dest: Path) -> None:
    try:
        shutil.move(source, dest)
    except OSError as error:
        raise StudioError(f"cannot move {source} to {dest}: {error.strerror or error}") from error
