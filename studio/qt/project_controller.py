"""Opening, saving, autosave, re-tracing and recipe import/export: the project's file flows.

Each flow is thin glue over the core :class:`~studio.core.project.session.Session`: the work
runs in the background, the questions (consent to unpickle or to build an architecture, missing
details, unsaved edits, paths) go through the :class:`ProjectQuestions` it is given, and what
happened comes out as signals. It never touches the window's widgets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QMessageBox

from studio.core.errors import (
    ArchitectureConsentRequired,
    ArchitectureRequired,
    InputError,
    StudioError,
    TrustRequired,
)
from studio.core.graph.tree import LayerTree
from studio.core.models.inputs import InputSpec
from studio.core.models.loaded import DEMO
from studio.core.plan.recipe import Recipe, read_recipe
from studio.core.project.project import project_file
from studio.core.project.session import Opened, is_project, open_recipe_target, open_target
from studio.qt import dialogs
from studio.qt.data_controller import Background
from studio.qt.recent import RecentFiles
from studio.qt.session import QtSession

log = logging.getLogger(__name__)
AUTOSAVE_DELAY_MS = 2000
"""Plan edits are autosaved this long after the last one."""
MODEL_FILTER = "Models and projects (*.pt *.pth *.pt2 *.safetensors *.onnx project.yaml);;All (*)"


class ProjectQuestions(Protocol):
    """The modal questions the file flows ask (the window answers them; tests replace them)."""

    def ask_path(self, kind: str, caption: str, file_filter: str = "") -> str | None: ...
    def confirm_trust(self, path: Path) -> bool: ...
    def confirm_architecture(self, architecture: str, file: Path) -> bool: ...
    def ask_details(self, path: str, reason: str, architecture: str | None,
                    example: InputSpec | None, need_architecture: bool
                    ) -> dialogs.ModelDetails | None: ...
    def ask_save_changes(self) -> QMessageBox.StandardButton: ...
    def ask_example_input(self, current: str) -> str | None: ...


class ProjectController(QObject):
    notice = Signal(str, str)
    """(kind, message): ``"error"`` or ``"info"``, for the window's notice bar."""
    status = Signal(str, int)
    """(message, milliseconds) for the status bar."""
    openFailed = Signal(str)
    recentChanged = Signal(list)

    def __init__(self, session: QtSession, questions: ProjectQuestions, recent: RecentFiles,
                 run_in_background: Background, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.core = session.core
        self.questions = questions
        self.recent = recent
        self.run_in_background = run_in_background
        self.autosave_timer = QTimer(self)
        self.autosave_timer.setSingleShot(True)
        self.autosave_timer.setInterval(AUTOSAVE_DELAY_MS)
        self.autosave_timer.timeout.connect(self.autosave_now)
        session.opened.connect(self._installed)
        session.saved.connect(self._saved)

    # --- opening ---------------------------------------------------------------------------
    def choose_and_open(self) -> None:
        path = self.questions.ask_path("open", "Open Model or Project", MODEL_FILTER)
        if path:
            self.open_path(path)

    def choose_and_open_folder(self) -> None:
        """A Hugging Face or sentence-transformers folder (config and safetensors), or a
        project folder."""
        path = self.questions.ask_path("folder", "Open Model Folder")
        if path:
            self.open_path(path)

    def open_path(self, path: str, architecture: str | None = None, trust: bool = False,
                  example: InputSpec | None = None) -> None:
        """Open a model file, a project folder or ``demo``, in the background."""
        if not self.maybe_save():
            return
        message = f"Opening project {project_file(path).parent.name}…" if is_project(path) \
            else f"Opening {Path(path).name}…"
        self.run_in_background(
            lambda: open_target(path, architecture, trust, example), self._opened,
            lambda error: self._open_failed(error, path, architecture, trust, example), message)

    def _opened(self, opened: Opened) -> None:
        for problem in self.core.install(opened):  # the session emits opened
            self.notice.emit("info", problem)
        if opened.shown_as != DEMO:
            self.recent.add(opened.shown_as)
            self.recentChanged.emit(self.recent.paths())

    def _open_failed(self, error: BaseException, path: str, architecture: str | None,
                     trust: bool, example: InputSpec | None,
                     reopen: Callable[[str], None] | None = None) -> None:
        """Ask for what opening ``path`` lacked and open it again, or say why it stays closed;
        ``reopen``: open it again with the architecture the user allowed (default: the path)."""
        project = is_project(path)
        if isinstance(error, ArchitectureConsentRequired):
            if self.questions.confirm_architecture(error.architecture, error.path):
                (reopen or (lambda allowed: self.open_path(path, allowed, trust, example)))(
                    error.architecture)
                return
            self.notice.emit("info", f"{Path(path).name} was not opened: building its model "
                             f"runs {error.architecture}, which needs your consent.")
        elif isinstance(error, TrustRequired):
            if self.questions.confirm_trust(error.path):
                self.open_path(path, architecture, True, example)
                return
            self.notice.emit("info", f"{Path(path).name} was not opened: it needs your trust "
                             "to unpickle.")
        elif isinstance(error, (ArchitectureRequired, InputError)) and not project:
            need_architecture = isinstance(error, ArchitectureRequired)
            suggestion = error.suggestion if isinstance(error, ArchitectureRequired) \
                else architecture
            details = self.questions.ask_details(path, str(error), suggestion, example,
                                                 need_architecture)
            if details is not None:
                self.open_path(path, details.architecture or architecture, trust,
                               details.example or example)
                return
            self.notice.emit("error", str(error))
        elif isinstance(error, StudioError):
            self.notice.emit("error", str(error))
        else:
            log.error("unexpected error opening %s", path, exc_info=error)
            self.notice.emit("error", f"Could not open {path}: unexpected "
                             f"{type(error).__name__}: {error}. This is a bug in the studio; "
                             "the details are in its log.")
        self.openFailed.emit(str(error))

    def _installed(self) -> None:
        """Autosave the new workspace's edits, bring back unsaved ones and say what it lacks."""
        workspace, plan = self.core.workspace, self.session.plan
        assert workspace is not None and plan is not None
        plan.planChanged.connect(lambda _names: self.autosave_timer.start())
        plan.stagesChanged.connect(lambda _key: self.autosave_timer.start())
        self._restore_autosave()
        if workspace.example is None and workspace.loaded.capabilities.traces_example:
            self.notice.emit("info", "No example input is known for this model, so shapes and "
                             "MACs are empty. Set one with Model ▸ Set Example Input…")
        elif workspace.tree.notes:  # e.g. an ONNX file whose image size is free
            self.notice.emit("info", " ".join(workspace.tree.notes))

    # --- example input ---------------------------------------------------------------------
    def choose_example_input(self) -> None:
        workspace = self.core.workspace
        if workspace is None:
            return
        text = self.questions.ask_example_input(str(workspace.example or ""))
        if text:
            try:
                self.set_example_input(InputSpec.parse(text))
            except StudioError as error:
                self.notice.emit("error", str(error))

    def set_example_input(self, example: InputSpec) -> None:
        """Re-trace the model on a new example input, keeping the plan."""
        if self.core.workspace is None:
            return

        def done(tree: LayerTree) -> None:
            for problem in self.core.retraced(tree, example):
                self.notice.emit("info", problem)

        self.run_in_background(lambda: self.core.trace(example), done,
                               lambda error: self.notice.emit("error", str(error)),
                               f"Tracing on {example}…")

    # --- autosave --------------------------------------------------------------------------
    def autosave_now(self) -> None:
        """Write the plan and settings beside the project (or to the recovery folder) if they
        have edits."""
        try:
            self.core.autosave()
        except StudioError as error:
            self.status.emit(f"Autosave failed: {error}", 10000)

    def _restore_autosave(self) -> None:
        assert self.session.plan is not None
        recipe = self.core.pending_autosave()
        if recipe is None:
            return
        # one step, so one Undo discards them
        self.session.plan.replace_recipe(recipe.to_plan(), recipe.stages(),
                                         "Restore autosaved edits")
        self.notice.emit("info", "Restored plan edits that were not saved (autosave). "
                         "Edit ▸ Undo discards them.")

    # --- saving ----------------------------------------------------------------------------
    def maybe_save(self) -> bool:
        """False if the user cancels; saves or discards unsaved plan edits otherwise."""
        if not self.core.dirty:
            return True
        answer = self.questions.ask_save_changes()
        if answer == QMessageBox.StandardButton.Save:
            return self.save()
        if answer == QMessageBox.StandardButton.Discard:
            self.core.discard_autosave()
            return True
        return False

    def save(self) -> bool:
        if self.core.project_path is None:
            return self.save_as()
        return self.save_project_to(self.core.project_path)

    def save_as(self) -> bool:
        path = self.questions.ask_path("save", "Save Project (a folder is created)", "")
        return bool(path) and self.save_project_to(Path(path))

    def save_project_to(self, path: Path) -> bool:
        if self.core.workspace is None:
            return False
        try:
            self.core.save(path)  # the session emits saved: _saved
        except StudioError as error:
            self.notice.emit("error", str(error))
            return False
        return True

    def _saved(self, manifest: str) -> None:
        if self.session.plan is not None:
            self.session.plan.undo_stack.setClean()
        self.recent.add(manifest)
        self.recentChanged.emit(self.recent.paths())
        self.status.emit(f"Saved {manifest}", 5000)

    # --- recipes ---------------------------------------------------------------------------
    def choose_recipe_to_import(self) -> None:
        path = self.questions.ask_path("open", "Import Recipe", "Recipes (*.yaml *.yml);;All (*)")
        if path:
            self.import_recipe(Path(path))

    def import_recipe(self, path: Path) -> None:
        """Apply a recipe's plan and run settings to the open model (one undoable step), or
        open the model it names."""
        try:
            if self.session.plan is None:
                self._open_recipe_model(read_recipe(path), path)
                return
            recipe = self.core.read_recipe(path)
        except StudioError as error:
            self.notice.emit("error", str(error))
            return
        self.session.plan.replace_recipe(recipe.to_plan(), recipe.stages(),
                                         f"Import recipe {path.name}")
        self.notice.emit("info", f"Applied the plan and run settings from {path.name} (Undo "
                         "restores the previous ones).")

    def _open_recipe_model(self, recipe: Recipe, path: Path,
                           architecture: str | None = None) -> None:
        self.run_in_background(
            lambda: open_recipe_target(recipe, path, architecture), self._opened,
            lambda error: self._open_failed(
                error, str(path), architecture, False, None,
                lambda allowed: self._open_recipe_model(recipe, path, allowed)),
            f"Opening the model of {path.name}…")

    def choose_recipe_to_export(self) -> None:
        path = self.questions.ask_path("save", "Export Recipe", "Recipes (*.yaml *.yml)")
        if path:
            self.export_recipe(Path(path).with_suffix(Path(path).suffix or ".yaml"))

    def export_recipe(self, path: Path) -> None:
        try:
            self.core.export_recipe(path)
        except StudioError as error:
            self.notice.emit("error", str(error))
            return
        self.status.emit(f"Exported recipe {path}", 5000)
