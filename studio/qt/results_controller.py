"""What the user does with finished experiments: read the report, export the compressed model,
open its folder, rename, annotate, delete (undoably, to the project's trash) and compare two.

The same actions serve the File menu, the experiments table's right-click menu and the Pareto
plot's; they act on the experiment named, or else on the one selected in the table, or else on
the newest. The work is the core session's; this controller asks the questions (where to
export, may it replace these files) through the :class:`ResultsQuestions` it is given and says
what happened through :attr:`notice`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from PySide6.QtCore import QModelIndex, QObject, QPoint, QUrl, Signal
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence, QUndoCommand, QUndoStack
from PySide6.QtWidgets import QMenu, QWidget

from studio.core.errors import ReplaceRequired, StudioError
from studio.core.project.experiments import Experiment
from studio.core.reports.run_report import RunReport
from studio.qt.experiments_table import EDITABLE, ExperimentsModel, ExperimentsTable
from studio.qt.plots import ParetoPlot, PlanDiffView
from studio.qt.plots.pareto import BASELINE_ID
from studio.qt.report_view import CompareFigures, ReportView
from studio.qt.session import QtSession

ONNX_FILTER = "ONNX model (*.onnx)"


class ResultsQuestions(Protocol):
    def ask_path(self, kind: str, caption: str, file_filter: str = "") -> str | None: ...
    def confirm_replace(self, paths: list[Path]) -> bool: ...


class DeleteExperiment(QUndoCommand):
    """Move an experiment to the project's trash; undo moves it back."""

    def __init__(self, controller: ResultsController, experiment: Experiment) -> None:
        super().__init__(f"Delete {experiment.name}")
        self.controller = controller
        self.experiment = experiment

    def redo(self) -> None:
        self.controller.guarded(lambda: self.controller.core.delete_experiment(
            self.experiment.id))

    def undo(self) -> None:
        self.controller.guarded(lambda: self.controller.core.restore_experiment(
            self.experiment))


class ResultsController(QObject):
    notice = Signal(str, str)
    """(kind, message) for the window's notice bar."""
    reportRequested = Signal()
    """The user asked to read a report: the window brings the Report tab forward."""
    compareShown = Signal()

    def __init__(self, session: QtSession, pareto: ParetoPlot, diff: PlanDiffView,
                 questions: ResultsQuestions, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.core = session.core
        self.pareto = pareto
        self.diff = diff
        self.questions = questions
        self.open_url: Callable[[QUrl], bool] = QDesktopServices.openUrl
        """How a folder is shown (tests replace it: there is no file manager offscreen)."""
        self.model = ExperimentsModel(self._edit, self)
        self.table = ExperimentsTable(self.model)
        self.report = ReportView()
        self.figures = CompareFigures()
        self.undo_stack = QUndoStack(self)
        self._build_actions(parent)
        self.table.menuRequested.connect(self._show_menu)
        self.table.doubleClicked.connect(self._double_clicked)
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)
        pareto.pointMenuRequested.connect(self._show_menu)
        pareto.pointClicked.connect(self._point_clicked)
        pareto.compareRequested.connect(self.compare)
        session.historyLoaded.connect(self.refresh)
        session.experimentAdded.connect(lambda _experiment: self.refresh())
        session.opened.connect(self.undo_stack.clear)  # trash entries of another project
        self.refresh()

    def _build_actions(self, parent: QWidget | None) -> None:
        def action(text: str, slot: Callable[[], object], shortcut: str | None = None
                   ) -> QAction:
            made = QAction(text, parent)
            if shortcut:
                made.setShortcut(QKeySequence(shortcut))
            made.triggered.connect(lambda _checked=False: slot())
            return made

        self.export_action = action("E&xport Compressed Model…", lambda: self.export(),
                                    "Ctrl+E")
        self.open_folder_action = action("Open Experiment &Folder", lambda: self.open_folder())
        self.report_action = action("Show &Report", lambda: self.show_report())
        self.compare_action = action("&Compare Selected", self.compare_selected)
        self.delete_action = action("&Delete Experiment", lambda: self.delete())
        self.undo_delete_action = self.undo_stack.createUndoAction(parent, "Undo")
        self.undo_delete_action.setText("Restore Deleted Experiment")

    # --- what the actions act on -----------------------------------------------------------
    def current_id(self) -> str | None:
        """The experiment selected in the table, else the newest; ``None`` when none."""
        selected = self.table.selected_ids()
        if selected:
            return selected[0]
        return next(reversed(self.core.experiments), None)

    def _experiment(self, experiment_id: str | None) -> Experiment | None:
        experiment_id = experiment_id or self.current_id()
        if experiment_id is None or experiment_id not in self.core.experiments:
            self.notice.emit("info", "No experiment yet: plan some compression, then "
                                     "Compress ▸ Run Plan (Ctrl+R).")
            return None
        return self.core.experiments[experiment_id]

    def guarded(self, work: Callable[[], object]) -> bool:
        try:
            work()
        except StudioError as error:
            self.notice.emit("error", str(error))
            return False
        return True

    def refresh(self) -> None:
        selected = self.table.selected_ids()
        self.model.set_experiments(self.core.experiments)
        has_any = bool(self.core.experiments)
        for item in (self.export_action, self.open_folder_action, self.report_action,
                     self.delete_action):
            item.setEnabled(has_any)
        for experiment_id in selected:
            self.table.select(experiment_id)
        shown = self.report.experiment_id
        if shown is not None and shown not in self.core.experiments:
            self.report.show_experiment(None)
        elif shown is not None:
            self.report.show_experiment(self.core.experiments[shown])

    # --- the actions -----------------------------------------------------------------------
    def export(self, experiment_id: str | None = None) -> list[Path]:
        """Ask where, then write the compressed ONNX file there (and its torch weights and
        adapters beside it); asks before replacing any file. Returns the files written."""
        experiment = self._experiment(experiment_id)
        if experiment is None:
            return []
        path = self.questions.ask_path("save", f"Export {experiment.name}", ONNX_FILTER)
        if not path:
            return []
        target = Path(path)
        try:
            written = self.core.export_experiment(experiment.id, target)
        except ReplaceRequired as clash:
            in_the_way = clash.paths
            if not self.questions.confirm_replace(in_the_way):
                return []
            written = []
            if not self.guarded(lambda: written.extend(
                    self.core.export_experiment(experiment.id, target, in_the_way))):
                return []
        except StudioError as error:
            self.notice.emit("error", str(error))
            return []
        extra = [p.name for p in written[1:]]
        self.notice.emit("info", f"Exported {experiment.name} to {written[0]}"
                         + (f" (with {', '.join(extra)} beside it)" if extra else ""))
        return written

    def open_folder(self, experiment_id: str | None = None) -> Path | None:
        experiment = self._experiment(experiment_id)
        if experiment is None:
            return None
        folder = self.core.experiment_folder(experiment.id)
        if not self.open_url(QUrl.fromLocalFile(str(folder))):
            self.notice.emit("info", f"The experiment's folder is {folder}")
        return folder

    def show_report(self, experiment_id: str | None = None) -> None:
        experiment = self._experiment(experiment_id)
        if experiment is not None:
            self.report.show_experiment(experiment)
            self.reportRequested.emit()

    def delete(self, experiment_id: str | None = None) -> None:
        """Move the experiment to the project's trash (Edit ▸ Restore Deleted Experiment)."""
        experiment = self._experiment(experiment_id)
        if experiment is None:
            return
        self.undo_stack.push(DeleteExperiment(self, experiment))
        self.notice.emit("info", f"Moved {experiment.name} to the project's trash; Edit ▸ "
                                 "Restore Deleted Experiment brings it back.")

    def _edit(self, experiment_id: str, field: str, text: str) -> None:
        self.guarded(lambda: self.core.edit_experiment(experiment_id, **{field: text}))

    def rename(self, experiment_id: str, name: str) -> None:
        self._edit(experiment_id, "name", name)

    def annotate(self, experiment_id: str, note: str) -> None:
        self._edit(experiment_id, "note", note)

    # --- comparing -------------------------------------------------------------------------
    def compare_selected(self) -> None:
        selected = self.table.selected_ids()
        if len(selected) != 2:
            self.notice.emit("info", "Select two experiments in the table (Ctrl+click) to "
                                     "compare them.")
            return
        self.compare(*selected)

    def _report(self, experiment_id: str) -> tuple[str, RunReport, dict]:
        """(name, report, plan); the baseline is any experiment's baseline figures."""
        if experiment_id == BASELINE_ID:
            first = next(iter(self.core.experiments.values()))
            report = RunReport.from_json(first.report or {})
            return "baseline", dataclasses.replace(report, compressed=report.baseline), {}
        experiment = self.core.experiments[experiment_id]
        return experiment.name, RunReport.from_json(experiment.report or {}), experiment.plan

    def compare(self, first: str, second: str) -> None:
        """Both experiments' figures side by side, and how their plans differ."""
        try:
            (name_a, report_a, plan_a), (name_b, report_b, plan_b) = (
                self._report(first), self._report(second))
        except (KeyError, StopIteration, ValueError) as error:
            self.notice.emit("error", f"cannot compare these experiments: {error}")
            return
        self.figures.show_pair([(name_a, report_a), (name_b, report_b)])
        self.diff.set_plans(plan_a, plan_b, name_a, name_b)
        self.compareShown.emit()

    # --- menus and clicks ------------------------------------------------------------------
    def menu_for(self, experiment_id: str) -> QMenu:
        """The right-click menu of one experiment (the baseline has none of its own files)."""
        menu = QMenu(self.table)
        if experiment_id == BASELINE_ID:
            menu.addAction("The baseline: the uncompressed model").setEnabled(False)
            return menu
        entries = [("Show Report", self.show_report), ("Export Compressed Model…", self.export),
                   ("Open Experiment Folder", self.open_folder), (None, None),
                   ("Delete", self.delete)]
        for text, slot in entries:
            if text is None:
                menu.addSeparator()
                continue
            menu.addAction(text).triggered.connect(
                lambda _checked=False, run=slot: run(experiment_id))
        if len(self.table.selected_ids()) == 2 and experiment_id in self.table.selected_ids():
            menu.addAction("Compare the Two Selected").triggered.connect(self.compare_selected)
        return menu

    def _show_menu(self, experiment_id: str, position: QPoint) -> None:
        self.menu_for(experiment_id).popup(position)

    def _double_clicked(self, index: QModelIndex) -> None:
        if index.column() not in EDITABLE:  # a double-click on a name or note edits it
            self.show_report()

    def _selection_changed(self, *_args: object) -> None:
        selected = self.table.selected_ids()
        if len(selected) == 1:
            self.report.show_experiment(self.core.experiments.get(selected[0]))

    def _point_clicked(self, experiment_id: str) -> None:
        if experiment_id in self.core.experiments:
            self.table.select(experiment_id)
