"""The open model and its project, without Qt: workspace (model, tree, plan, run settings),
project path, dirty flag, experiment history and sensitivity results.

The window's controllers edit and read through it, and observe it: :meth:`Session.subscribe`
takes a callback that hears ``(event, payload)`` for ``opened``, ``dirty``, ``saved``,
``history``, ``experiment`` and ``sensitivity`` (the Qt adapter turns them into signals). What
blocks (loading a model, tracing, timing an evaluation) is a plain function or method returning
a value, so the caller chooses the thread; the session's state changes on the caller's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from studio.core.atomic import write_text_atomic
from studio.core.data.consent import FunctionCode, check_consent
from studio.core.data.sources import load_task
from studio.core.engine.sensitivity import estimate_runtime_s, measure_seconds_per_eval
from studio.core.errors import StudioError
from studio.core.graph.tree import LayerTree
from studio.core.jobs.kinds import JobSpec
from studio.core.models.inputs import InputSpec
from studio.core.plan.recipe import Recipe, check_layer_names, dump_recipe, read_recipe
from studio.core.plan.stages import DataSection
from studio.core.project.autosave import (
    autosave_path,
    clear_autosave,
    pending_autosave,
    write_autosave,
)
from studio.core.project.experiment_files import (
    export_experiment,
    move_project_history,
    move_to_trash,
    restore_from_trash,
)
from studio.core.project.experiments import (
    Experiment,
    experiment_dir,
    load_experiments,
    load_experiments_report,
    save_experiment,
)
from studio.core.project.project import PROJECT_FILE, load_project, project_file, save_project
from studio.core.project.studies import load_sensitivity, save_sensitivity
from studio.core.reports.sensitivity_report import SensitivityReport
from studio.core.workspace import Workspace, build_tree, open_recipe_workspace, open_workspace

Listener = Callable[[str, Any], None]
SCRATCH_DIR = "scratch"


def is_project(path: str | Path) -> bool:
    """A project's folder or manifest; any other folder is a model folder (Hugging Face)."""
    candidate = Path(path).expanduser()
    return candidate.name == PROJECT_FILE or (candidate / PROJECT_FILE).is_file()


@dataclass(frozen=True)
class Opened:
    """What :func:`open_target` loaded, ready for :meth:`Session.install`."""

    workspace: Workspace
    manifest: Path | None
    """The project's ``project.yaml``; ``None`` for a model not saved as a project yet."""
    shown_as: str
    """The path as the user named it (recent files), or ``demo``."""


def open_target(path: str, architecture: str | None = None, trust: bool = False,
                example: InputSpec | None = None) -> Opened:
    """Load a project folder or manifest, a model file or folder, or ``demo`` (blocking);
    ``architecture``: one the user named or allowed, used instead of the file's."""
    if is_project(path):
        manifest = project_file(path)
        return Opened(load_project(manifest, trust, architecture), manifest, str(manifest))
    return Opened(open_workspace(path, architecture, trust, example), None, path)


def open_recipe_target(recipe: Recipe, path: Path, architecture: str | None = None) -> Opened:
    """Open the model a recipe file names, with its plan and settings (blocking);
    ``architecture``: the factory the user allowed."""
    if recipe.model is None:
        raise StudioError(f"{path}: names no model; open a model first")
    workspace = open_recipe_workspace(recipe, path.parent, False, str(path), architecture)
    return Opened(workspace, None, workspace.model_path)


class Session:
    def __init__(self, recovery_dir: Path, scratch_root: Path | None = None) -> None:
        self.recovery_dir = recovery_dir
        """Where a model not saved as a project autosaves."""
        self.scratch_root = scratch_root or recovery_dir.parent / SCRATCH_DIR
        """Where a model not saved as a project keeps its experiments (one scratch project
        per run of an unsaved model); Save As moves them into the folder the user picks."""
        self.workspace: Workspace | None = None
        self.project_path: Path | None = None
        """The open project's manifest (``project.yaml``)."""
        self.dirty = False
        """Edits not saved yet (the GUI's undo stack says so: it knows when edits are undone)."""
        self.experiments: dict[str, Experiment] = {}
        """The project's finished experiments with a report, oldest first."""
        self.sensitivity: SensitivityReport | None = None
        self._listeners: list[Listener] = []

    # --- observers -------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _notify(self, event: str, payload: Any = None) -> None:
        for listener in list(self._listeners):
            listener(event, payload)

    @property
    def project_dir(self) -> Path | None:
        return self.project_path.parent if self.project_path is not None else None

    @property
    def is_scratch(self) -> bool:
        """The open project is a scratch one the studio made (not chosen by the user)."""
        folder = self.project_dir
        return folder is not None and folder.parent == self.scratch_root

    def ensure_project(self) -> Path:
        """The project's folder; a model not saved yet is saved as a scratch project first, so
        a run never has to stop and ask where to keep its experiments."""
        if self.project_dir is not None:
            return self.project_dir
        if self.workspace is None:
            raise StudioError("no model is open")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        folder = self.scratch_root / f"{self.workspace.tree.model_name}-{stamp}"
        suffix = 1
        while folder.exists():
            suffix += 1
            folder = folder.with_name(f"{self.workspace.tree.model_name}-{stamp}-{suffix}")
        self.save(folder)
        return folder

    @property
    def base_dir(self) -> Path | None:
        """Where relative paths of the recipe (data files) start: the project's folder."""
        return self.project_dir

    # --- opening ---------------------------------------------------------------------------
    def install(self, opened: Opened) -> list[str]:
        """Make ``opened`` the open model and project; returns one line per part of its
        history that could not be read (it is skipped, never allowed to hide the rest)."""
        self.workspace = opened.workspace
        self.project_path = opened.manifest
        self.dirty = False
        problems = self._read_history()
        self._notify("opened", opened)
        self._notify("history")
        return problems

    def set_dirty(self, dirty: bool) -> None:
        if dirty != self.dirty:
            self.dirty = dirty
            self._notify("dirty", dirty)

    def trace(self, example: InputSpec) -> LayerTree:
        """The open model's tree traced on ``example`` (blocking; changes nothing)."""
        if self.workspace is None:
            raise StudioError("no model is open")
        return build_tree(self.workspace.loaded, example)

    def retraced(self, tree: LayerTree, example: InputSpec) -> list[str]:
        """Take a tree :meth:`trace` built; the plan and settings stay, the model reopens."""
        assert self.workspace is not None
        self.workspace.tree = tree
        self.workspace.example = example
        return self.install(Opened(self.workspace, self.project_path,
                                   self.workspace.model_path))

    # --- saving and autosave ---------------------------------------------------------------
    def save(self, path: Path | None = None) -> Path:
        """Save the project (to ``path``: a folder, created); raises :class:`StudioError`."""
        if self.workspace is None:
            raise StudioError("no model is open")
        target = path or self.project_path
        if target is None:
            raise StudioError("the project has no folder yet; choose one (Save As)")
        scratch = self.project_dir if self.is_scratch else None
        manifest = save_project(self.workspace, target)
        new_folder = self.project_path != manifest
        if scratch is not None and new_folder:
            move_project_history(scratch, manifest.parent)
        clear_autosave(self.workspace, self.project_path, self.recovery_dir)
        self.project_path = manifest
        self.set_dirty(False)
        if new_folder:
            self.load_history()
        self._notify("saved", manifest)
        return manifest

    def autosave(self) -> None:
        """Write the plan and settings beside the project (or to the recovery folder) if
        they have unsaved edits; raises :class:`StudioError` when the file cannot be written."""
        if self.workspace is None or not self.dirty:
            return
        write_autosave(self.workspace, autosave_path(self.workspace, self.project_path,
                                                     self.recovery_dir))

    def pending_autosave(self) -> Recipe | None:
        """An autosave newer than the project that differs from what is open and whose layer
        names fit its tree; ``None`` otherwise."""
        if self.workspace is None:
            return None
        recipe = pending_autosave(self.workspace, self.project_path, self.recovery_dir)
        if recipe is None or (recipe.to_plan() == self.workspace.plan
                              and recipe.stages() == self.workspace.stages):
            return None
        try:
            check_layer_names(recipe, self.workspace.tree, "autosave")
        except StudioError:
            return None
        return recipe

    def discard_autosave(self) -> None:
        if self.workspace is not None:
            clear_autosave(self.workspace, self.project_path, self.recovery_dir)

    # --- recipes ---------------------------------------------------------------------------
    def read_recipe(self, path: Path) -> Recipe:
        """A recipe file checked against the open model's layer names."""
        recipe = read_recipe(path)
        if self.workspace is not None:
            check_layer_names(recipe, self.workspace.tree, str(path))
        return recipe

    def export_recipe(self, path: Path) -> None:
        if self.workspace is None:
            raise StudioError("no model is open")
        write_text_atomic(path, dump_recipe(self.workspace.to_recipe(base=path.parent)))

    # --- jobs and their results ------------------------------------------------------------
    def job_recipe(self) -> Recipe:
        """The recipe a job runs: the workspace as it is now, paths relative to the project."""
        if self.workspace is None:
            raise StudioError("no model is open")
        return self.workspace.to_recipe(base=self.project_dir)

    def job_spec(self, kind: str, out_dir: Path, consent: Mapping[str, Any],
                 device: str | None, options: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
        """What the child process runs (see :mod:`studio.core.jobs.child`); ``consent``:
        ``trust`` (the model file the user trusted), ``architecture`` (the one outside the
        registry they allowed) and ``data_consent`` (the data function code they allowed, which
        the child checks again)."""
        return JobSpec(kind, self.job_recipe(), self.project_dir, out_dir, device,
                       bool(consent.get("trust")), dict(options or {}),
                       list(consent.get("data_consent") or []),
                       architecture=consent.get("architecture")).to_json()

    def load_history(self) -> list[str]:
        """Read the project's experiments and sensitivity sweep; one line per part skipped."""
        problems = self._read_history()
        self._notify("history")
        return problems

    def _read_history(self) -> list[str]:
        self.experiments = {}
        self.sensitivity = None
        problems: list[str] = []
        folder = self.project_dir
        if folder is not None:
            history = load_experiments_report(folder)
            problems += [f"Skipped a damaged experiment: {line}" for line in history.problems]
            self.experiments = {e.id: e for e in history.experiments
                                if e.status == "finished" and e.report}
            try:
                self.sensitivity = load_sensitivity(folder)
            except StudioError as error:
                problems.append(str(error))
        return problems

    def record_experiment(self, experiment: Experiment,
                          files: Mapping[str, str | Path] | None = None) -> None:
        """Save a job's experiment into the project (whatever its status); a finished one
        with a report joins the history. Raises :class:`StudioError` if it cannot be saved."""
        if self.project_dir is None:
            raise StudioError("experiments are kept in a project folder; save the project")
        save_experiment(self.project_dir, experiment, files)
        if experiment.status == "finished" and experiment.report is not None:
            self.experiments[experiment.id] = experiment
            self._notify("experiment", experiment)

    # --- the user's edits to the history ----------------------------------------------------
    def _experiment(self, experiment_id: str) -> tuple[Path, Experiment]:
        if self.project_dir is None or experiment_id not in self.experiments:
            raise StudioError(f"no experiment {experiment_id!r} in the open project")
        return self.project_dir, self.experiments[experiment_id]

    def experiment_folder(self, experiment_id: str) -> Path:
        folder, experiment = self._experiment(experiment_id)
        return experiment_dir(folder, experiment.id)

    def edit_experiment(self, experiment_id: str, name: str | None = None,
                        note: str | None = None) -> None:
        """Rename or annotate an experiment (saved at once)."""
        folder, experiment = self._experiment(experiment_id)
        if name is not None:
            if not name.strip():
                raise StudioError("an experiment needs a name; type one")
            experiment.name = name.strip()
        if note is not None:
            experiment.note = note
        save_experiment(folder, experiment)
        self._notify("history")

    def delete_experiment(self, experiment_id: str) -> Experiment:
        """Move an experiment to the project's trash; :meth:`restore_experiment` undoes it."""
        folder, experiment = self._experiment(experiment_id)
        move_to_trash(folder, experiment.id)
        del self.experiments[experiment.id]
        self._notify("history")
        return experiment

    def restore_experiment(self, experiment: Experiment) -> None:
        if self.project_dir is None:
            raise StudioError("no project is open")
        restore_from_trash(self.project_dir, experiment.id)
        self.experiments[experiment.id] = experiment
        self.experiments = dict(sorted(self.experiments.items(),
                                       key=lambda item: (item[1].created, item[0])))
        self._notify("history")

    def export_experiment(self, experiment_id: str, target: Path,
                          replace: Collection[Path] = ()) -> list[Path]:
        """Copy an experiment's compressed files to ``target`` (see
        :func:`~studio.core.project.experiment_files.export_experiment`)."""
        folder, experiment = self._experiment(experiment_id)
        return export_experiment(folder, experiment, target, replace)

    def adopt_experiment(self, experiment_id: str) -> Experiment | None:
        """Add to the history an experiment a job saved into the project itself (a search's
        full-fidelity trial); ``None`` when it is not there or not a finished one."""
        if self.project_dir is None:
            return None
        found = next((e for e in load_experiments(self.project_dir)
                      if e.id == experiment_id), None)
        if found is None or found.status != "finished" or not found.report:
            return None
        self.experiments[found.id] = found
        self._notify("experiment", found)
        return found

    def set_sensitivity(self, report: SensitivityReport) -> None:
        """Keep a finished sweep (in the project, when there is one) and tell observers;
        raises :class:`StudioError` when it cannot be written (it is still kept in memory)."""
        self.sensitivity = report
        self._notify("sensitivity", report)
        if self.project_dir is not None:
            save_sensitivity(self.project_dir, report)

    def sensitivity_seconds(self, allowed: Collection[FunctionCode], subset: int = 100
                            ) -> float:
        """About how long the default sweep takes on the task's data, from one timed
        evaluation on ``subset`` samples (blocking). ``allowed``: the data function code the
        user consented to; it must be unchanged since."""
        workspace = self.workspace
        if workspace is None:
            raise StudioError("no model is open")
        section = workspace.stages.get("data") or DataSection()
        check_consent(section, self.base_dir, allowed)
        task = load_task(section, self.base_dir, trust=bool(allowed),
                         model_path=workspace.loaded.path)
        return estimate_runtime_s(workspace, measure_seconds_per_eval(
            workspace, subset=subset, repeats=1, task=task), measured_subset=subset)
