"""The studio's main window: the layout (layer tree, plan inspector, totals and docks), the
controllers and the actions wired to them.

The file flows live in :class:`~studio.qt.project_controller.ProjectController`, the data tab,
runs (with sensitivity, targets and plot export) and run settings in their own controllers; the
window answers their modal questions (consent, paths, sweeps, targets, details the file cannot
give) and shows their notices, never blocking on work.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QModelIndex, QSettings, QStandardPaths, Qt, QThreadPool, Signal
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QKeySequence,
    QUndoGroup,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDockWidget,
    QFrame,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QScrollArea,
    QSplitter,
    QStackedWidget,
    QStyle,
    QTreeView,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import create_worker

from studio.core.models.loaded import DEMO
from studio.core.project.session import Session
from studio.core.search.settings import SearchSettings
from studio.core.workspace import Workspace
from studio.qt.compress_controller import CompressController
from studio.qt.data_controller import DataController
from studio.qt.data_panel import DataPanel
from studio.qt.help_menu import add_help_menu
from studio.qt.icons import redo_icon, undo_icon
from studio.qt.inspector import InspectorPanel
from studio.qt.jobs import JobsPanel
from studio.qt.jobs.status import JobStatus
from studio.qt.layer_view_controller import LayerViewController
from studio.qt.notices import NoticeBar
from studio.qt.plan_controller import PlanController
from studio.qt.plots import CurvesPlot, ParetoPlot, PlanDiffView, SensitivityHeatmap
from studio.qt.plots.layer_view import LayerView
from studio.qt.project_controller import ProjectController
from studio.qt.recent import RecentFiles
from studio.qt.results_controller import ResultsController
from studio.qt.run_settings import RunSettingsController, RunSettingsPanel
from studio.qt.search_controller import SearchController
from studio.qt.search_dialog import SearchDialog
from studio.qt.search_panel import SearchPanel
from studio.qt.session import QtSession
from studio.qt.totals import TotalsPanel
from studio.qt.tree_filter import LayerFilterProxy
from studio.qt.tree_model import NODE_ID_ROLE, LayerTreeModel
from studio.qt.welcome import WelcomePage
from studio.qt.window_questions import WindowQuestions


def splitter(first: QWidget, second: QWidget,
             orientation: Qt.Orientation = Qt.Orientation.Horizontal) -> QSplitter:
    """Two panes side by side (or stacked), the first given more room."""
    pair = QSplitter(orientation)
    pair.addWidget(first)
    pair.addWidget(second)
    pair.setStretchFactor(0, 1)
    pair.setStretchFactor(1, 1)
    pair.setSizes([1000, 1000])  # halves, whatever the panes ask for
    return pair


class LayerTreeView(QTreeView):
    """The layer tree. Selecting a row keeps the horizontal scroll where it is: Qt would scroll
    to the clicked column and push the layer names out of sight on a narrow window."""

    def scrollTo(self, index: QModelIndex,
                 hint: QAbstractItemView.ScrollHint = QAbstractItemView.ScrollHint.EnsureVisible
                 ) -> None:
        horizontal = self.horizontalScrollBar().value()
        super().scrollTo(index, hint)
        self.horizontalScrollBar().setValue(horizontal)


class MainWindow(WindowQuestions, QMainWindow):
    workspaceOpened = Signal()

    def __init__(self, settings: QSettings | None = None,
                 recovery_dir: Path | None = None) -> None:
        super().__init__()
        self.settings = settings or QSettings()
        self.session = Session(recovery_dir or Path(QStandardPaths.writableLocation(
            QStandardPaths.StandardLocation.AppDataLocation)) / "recovery")
        self.qsession = QtSession(self.session, self)
        self.recent = RecentFiles(self.settings)
        self._workers: set[Any] = set()
        self.undo_group = QUndoGroup(self)
        self.undo_group.cleanChanged.connect(self.qsession.set_clean)

        self.tree_model = LayerTreeModel(parent=self)
        self.proxy = LayerFilterProxy(self)
        self.proxy.setSourceModel(self.tree_model)
        self._build_ui()
        self._build_actions()
        self.qsession.opened.connect(self._install)
        self.qsession.dirtyChanged.connect(lambda _dirty: self._update_title())
        self.qsession.saved.connect(lambda _manifest: self._update_title())
        self.qsession.historyLoaded.connect(
            lambda: self.tree_model.set_sensitivity(self.session.sensitivity))
        self.qsession.sensitivityChanged.connect(self.tree_model.set_sensitivity)
        self.setAcceptDrops(True)
        self.resize(1240, 740)  # fits a 1280×800 screen with its title bar
        self.resizeDocks(self.docks[:1], [280], Qt.Orientation.Vertical)
        self._update_title()
        self.welcome.set_recent(self.recent.paths())

    # --- layout ----------------------------------------------------------------------------
    def _build_ui(self) -> None:
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(6, 6, 6, 6)
        self.notices = NoticeBar()
        self.notices.float_over(central)
        self.pages = QStackedWidget()
        layout.addWidget(self.pages, 1)
        self.setCentralWidget(central)

        self.welcome = WelcomePage()
        self.pages.addWidget(self.welcome)

        editor = QSplitter(Qt.Orientation.Horizontal)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter layers by name or type…")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self._filter_changed)
        left_layout.addWidget(self.filter_edit)
        self.view = LayerTreeView()
        self.view.setModel(self.proxy)
        self.view.setUniformRowHeights(True)
        self.view.setAlternatingRowColors(True)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(-1, Qt.SortOrder.AscendingOrder)  # model order until a click
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.selectionModel().selectionChanged.connect(self._selection_changed)
        header = self.view.header()
        header.setStretchLastSection(False)
        for column, width in enumerate((190, 120, 96, 58, 58, 68, 60, 42, 92, 110, 80)):
            self.view.setColumnWidth(column, width)
        self.view.expanded.connect(self._fit_name_columns)
        left_layout.addWidget(self.view)
        editor.addWidget(left)

        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        self.inspector = InspectorPanel()
        self.totals = TotalsPanel()
        # The plan's rows grow with its fields: a short screen scrolls them (vertically only)
        # instead of growing the window; the pane is never narrower than its editors.
        inspector_scroll = QScrollArea()
        inspector_scroll.setWidget(self.inspector)
        inspector_scroll.setWidgetResizable(True)
        inspector_scroll.setFrameShape(QFrame.Shape.NoFrame)
        inspector_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.inspector_scroll = inspector_scroll
        # The totals get their own scroll and a splitter: when the layer view takes height,
        # both shrink together instead of the totals squeezing the plan to one row.
        totals_scroll = QScrollArea()
        totals_scroll.setWidget(self.totals)
        totals_scroll.setWidgetResizable(True)
        totals_scroll.setFrameShape(QFrame.Shape.NoFrame)
        totals_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        plan_and_totals = QSplitter(Qt.Orientation.Vertical)
        plan_and_totals.addWidget(inspector_scroll)
        plan_and_totals.addWidget(totals_scroll)
        plan_and_totals.setChildrenCollapsible(False)
        plan_and_totals.setStretchFactor(0, 3)
        plan_and_totals.setStretchFactor(1, 2)
        right_layout.addWidget(plan_and_totals)
        right.setMinimumWidth(self.inspector.minimumSizeHint().width()
                              + inspector_scroll.verticalScrollBar().sizeHint().width())
        editor.addWidget(right)
        editor.setChildrenCollapsible(False)
        editor.setStretchFactor(0, 3)
        editor.setStretchFactor(1, 1)
        editor.setSizes([900, 360])
        self.pages.addWidget(editor)
        self.editor = editor

        self._build_docks()

        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setMaximumWidth(160)
        self.busy.hide()
        self.statusBar().addPermanentWidget(self.busy)
        self.job_status = JobStatus(self.jobs.model)
        self.statusBar().addPermanentWidget(self.job_status)

    def _build_docks(self) -> None:
        """Data, jobs, experiments (Pareto plot and plan diff), training curves, sensitivity."""
        self.project = ProjectController(self.qsession, self, self.recent,
                                         self.run_in_background, self)
        self.project.notice.connect(self.notices.show_notice)
        self.project.status.connect(self.statusBar().showMessage)
        self.project.recentChanged.connect(self.welcome.set_recent)
        self.welcome.openRequested.connect(self.project.choose_and_open)
        self.welcome.demoRequested.connect(lambda: self.project.open_path(DEMO))
        self.welcome.recentRequested.connect(self.project.open_path)
        self.data_panel = DataPanel()
        self.run_settings = RunSettingsPanel(exclude=("data",))  # data has its own tab
        self.jobs = JobsPanel()
        self.jobs.setMinimumHeight(120)  # the bottom docks share one height; keep it small
        self.pareto = ParetoPlot()
        self.plan_diff = PlanDiffView()
        self.curves = CurvesPlot()
        self.heatmap = SensitivityHeatmap()
        self.heatmap.layerSelected.connect(self.select_layer)
        self.results = ResultsController(self.qsession, self.pareto, self.plan_diff, self, self)
        self.results.notice.connect(self.notices.show_notice)
        self.results.reportRequested.connect(lambda: self.show_dock("Report"))
        self.results.compareShown.connect(lambda: self.show_dock("Compare"))
        self.search_panel = SearchPanel()
        self.layer_view = LayerView()
        docks = []
        for title, widget in (("Experiments", splitter(self.pareto, self.results.table)),
                              ("Report", self.results.report),
                              ("Compare", splitter(self.results.figures, self.plan_diff,
                                                   Qt.Orientation.Vertical)),
                              ("Data", self.data_panel),
                              ("Run settings", self.run_settings), ("Jobs", self.jobs),
                              ("Training", self.curves), ("Sensitivity", self.heatmap),
                              ("Search", self.search_panel), ("Layer view", self.layer_view)):
            dock = QDockWidget(title, self)
            dock.setObjectName(f"dock-{title.lower()}")
            dock.setWidget(widget)
            self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
            docks.append(dock)
        for dock in docks[1:]:
            self.tabifyDockWidget(docks[0], dock)
        docks[0].raise_()
        self.docks = docks
        self.dock = {dock.windowTitle(): dock for dock in docks}
        # lambdas: the questions are looked up when asked (tests answer them on the window)
        self.data = DataController(
            self.qsession, self.data_panel,
            lambda kind, caption, file_filter: self.ask_path(kind, caption, file_filter),
            lambda target, file: self.confirm_function(target, file),
            self.run_in_background, self)
        self.data.notice.connect(self.notices.show_notice)
        self.settings_controller = RunSettingsController(self.qsession, self.run_settings,
                                                        self)
        self.compress = CompressController(self.qsession, self.jobs, self.pareto, self.curves,
                                           self.heatmap, self.data.job_consent, self,
                                           self.run_in_background, self)
        self.compress.notice.connect(self.notices.show_notice)
        self.search = SearchController(
            self.qsession, self.compress, self.search_panel,
            lambda settings, estimate: self.ask_search(settings, estimate), self)
        self.search.notice.connect(self.notices.show_notice)
        self.layer_views = LayerViewController(self.qsession, self.layer_view, self)
        self.dock["Layer view"].visibilityChanged.connect(self._make_room_for_layer_view)
        self.layer_views.sqnrChanged.connect(self.tree_model.set_sqnr)

    # --- the session, as the controllers and tests read it ----------------------------------
    @property
    def workspace(self) -> Workspace | None:
        return self.session.workspace

    @property
    def project_path(self) -> Path | None:
        return self.session.project_path

    @property
    def controller(self) -> PlanController | None:
        """The open workspace's plan controller (its undo stack)."""
        return self.qsession.plan

    def _fit_name_columns(self, *_args: object) -> None:
        """Widen Layer and Type as deeper or longer rows come into view (never narrow them:
        the user may have set the width). Qt measures the rows on screen only, so it is cheap."""
        for column in (0, 1):
            wanted = self.view.sizeHintForColumn(column)
            if wanted > self.view.columnWidth(column):
                self.view.setColumnWidth(column, min(wanted, 420))

    def select_layer(self, name: str) -> None:
        if self.workspace is None or name not in self.workspace.tree:
            return
        source = self.tree_model.index_of(self.workspace.tree.get(name).id)
        self.view.setCurrentIndex(self.proxy.mapFromSource(source))

    def _action(self, text: str, slot: Callable[[], object], shortcut: Any = None,
                icon: QStyle.StandardPixmap | None = None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        if icon is not None:
            action.setIcon(self.style().standardIcon(icon))
        action.triggered.connect(lambda _checked=False: slot())
        return action

    def _build_actions(self) -> None:
        pixmap = QStyle.StandardPixmap
        self.open_action = self._action("&Open Model or Project…", self.project.choose_and_open,
                                        QKeySequence.StandardKey.Open, pixmap.SP_DialogOpenButton)
        self.open_folder_action = self._action("Open Model &Folder…",
                                               self.project.choose_and_open_folder)
        self.demo_action = self._action("Open &Demo", lambda: self.project.open_path(DEMO))
        self.save_action = self._action("&Save Project", self.project.save,
                                        QKeySequence.StandardKey.Save, pixmap.SP_DialogSaveButton)
        self.save_as_action = self._action("Save Project &As…", self.project.save_as,
                                           QKeySequence.StandardKey.SaveAs)
        self.import_action = self._action("&Import Recipe…", self.project.choose_recipe_to_import)
        self.export_action = self._action("&Export Recipe…", self.project.choose_recipe_to_export)
        self.example_action = self._action("Set &Example Input…", self.project.choose_example_input)
        quit_action = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.undo_action = self.undo_group.createUndoAction(self, "&Undo")
        self.undo_action.setShortcut(QKeySequence.StandardKey.Undo)
        self.undo_action.setIcon(undo_icon())
        self.redo_action = self.undo_group.createRedoAction(self, "&Redo")
        self.redo_action.setShortcut(QKeySequence.StandardKey.Redo)
        self.redo_action.setIcon(redo_icon())
        expand = self._action("E&xpand All", self.view.expandAll)
        collapse = self._action("&Collapse All", self.view.collapseAll)
        find = self._action("&Find Layer", self.filter_edit.setFocus, QKeySequence.StandardKey.Find)

        menu = self.menuBar().addMenu("&File")
        menu.addActions([self.open_action, self.open_folder_action, self.demo_action])
        self.recent_menu = menu.addMenu("Open &Recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        menu.addSeparator()
        menu.addActions([self.save_action, self.save_as_action])
        menu.addSeparator()
        menu.addActions([self.import_action, self.export_action])
        menu.addSeparator()
        menu.addActions([self.results.export_action, self.results.open_folder_action])
        menu.addSeparator()
        menu.addAction(quit_action)
        edit = self.menuBar().addMenu("&Edit")
        edit.addActions([self.undo_action, self.redo_action, find])
        edit.addSeparator()
        edit.addAction(self.results.undo_delete_action)
        model = self.menuBar().addMenu("&Model")
        model.addAction(self.example_action)
        compress = self.menuBar().addMenu("&Compress")
        self.run_action = self._action("&Run Plan", self.compress.run_plan, "Ctrl+R",
                                       pixmap.SP_MediaPlay)
        self.sensitivity_action = self._action("&Sensitivity Analysis…",
                                              self.compress.choose_sensitivity)
        self.allocate_action = self._action("&Allocate to Target…", self.compress.choose_target)
        self.export_plot_action = self._action("E&xport Plot…", self.compress.export_plot)
        self.data_action = self._action("&Data…", self.show_data_panel)
        self.run_settings_action = self._action("Run &Settings…",
                                                lambda: self.show_dock("Run settings"))
        self.search_action = self._action("Searc&h…", self.start_search)
        compress.addActions([self.data_action, self.run_settings_action, self.run_action,
                             self.sensitivity_action, self.allocate_action,
                             self.search_action])
        compress.addSeparator()
        compress.addAction(self.export_plot_action)
        view = self.menuBar().addMenu("&View")
        view.addActions([expand, collapse])
        view.addSeparator()
        view.addActions([dock.toggleViewAction() for dock in self.docks])
        self.help_actions = add_help_menu(self)

        toolbar = self.addToolBar("Main")
        toolbar.setObjectName("main-toolbar")
        toolbar.setMovable(False)
        toolbar.addActions([self.open_action, self.save_action])
        toolbar.addSeparator()
        toolbar.addActions([self.undo_action, self.redo_action])
        toolbar.addSeparator()
        toolbar.addAction(self.run_action)
        self._set_model_actions_enabled(False)

    def _set_model_actions_enabled(self, enabled: bool) -> None:
        for action in (self.save_action, self.save_as_action, self.export_action,
                       self.example_action, self.run_action, self.sensitivity_action,
                       self.allocate_action, self.data_action, self.run_settings_action):
            action.setEnabled(enabled)

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        for path in self.recent.paths():
            self.recent_menu.addAction(path, lambda p=path: self.project.open_path(p))
        if self.recent_menu.isEmpty():
            self.recent_menu.addAction("(none)").setEnabled(False)

    def ask_search(self, settings: SearchSettings,
                   estimate: Callable[[SearchSettings], float]) -> SearchSettings | None:
        dialog = SearchDialog(settings, estimate, self)
        return dialog.settings() if dialog.exec() == QDialog.DialogCode.Accepted else None

    def start_search(self) -> None:
        self.show_dock("Search")
        self.search.choose()

    # --- notices ---------------------------------------------------------------------------
    def show_error(self, message: str) -> None:
        self.notices.show_notice("error", message)
        self.statusBar().showMessage("Error — see the notice above", 5000)

    def show_info(self, message: str) -> None:
        self.notices.show_notice("info", message)

    # --- background work -------------------------------------------------------------------
    def run_in_background(self, task: Callable[[], Any], done: Callable[[Any], None],
                          failed: Callable[[BaseException], None], message: str) -> None:
        """Run ``task`` in a worker thread; ``done``/``failed`` run back in the GUI thread."""
        # Naming the "errored" handler stops superqt from re-raising the error in the GUI thread.
        worker = create_worker(task, _start_thread=False,
                               _connect={"returned": done, "errored": failed})
        self._workers.add(worker)

        def finished() -> None:
            self._workers.discard(worker)
            if not self._workers:
                self.busy.hide()
                self.statusBar().clearMessage()

        worker.finished.connect(finished)
        self.busy.show()
        self.statusBar().showMessage(message)
        worker.start()

    @property
    def busy_working(self) -> bool:
        return bool(self._workers)

    # --- docks and drops -------------------------------------------------------------------
    def show_data_panel(self) -> None:
        self.show_dock("Data")

    def show_dock(self, title: str) -> None:
        self.dock[title].show()
        self.dock[title].raise_()

    def _make_room_for_layer_view(self, visible: bool) -> None:
        """The layer view's six plots need more height than the other tabs: when it comes to
        the front, grow the bottom docks to fit them (at most half the window), so its axes
        are not cut off at the default window size."""
        dock = self.dock["Layer view"]
        if not visible or dock.isFloating():
            return
        wanted = min(self.layer_view.sizeHint().height(), int(self.height() * 0.5))
        if dock.height() < wanted:
            self.resizeDocks([dock], [wanted], Qt.Orientation.Vertical)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        files = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if files:
            event.acceptProposedAction()
            self.project.open_path(files[0])

    def _install(self) -> None:
        """Show the workspace the session just opened (or re-traced)."""
        workspace, controller = self.workspace, self.controller
        assert workspace is not None and controller is not None
        for stack in self.undo_group.stacks():
            self.undo_group.removeStack(stack)
        self.undo_group.addStack(self.controller.undo_stack)
        self.undo_group.setActiveStack(self.controller.undo_stack)
        self.controller.planChanged.connect(self._plan_changed)
        self.controller.stagesChanged.connect(lambda _key: self._update_totals())
        self.filter_edit.clear()
        self.tree_model.set_tree(workspace.tree, self.controller.resolved)
        self.pages.setCurrentWidget(self.editor)
        root = self.proxy.index(0, 0)
        self.view.expand(root)
        self.view.setCurrentIndex(root)
        self._set_model_actions_enabled(True)
        self._update_totals()
        self._update_title()
        self._update_status()
        self.workspaceOpened.emit()

    # --- plan and selection ----------------------------------------------------------------
    def selected_node_ids(self) -> list[int]:
        rows = self.view.selectionModel().selectedRows(0)
        return sorted({self.proxy.data(index, NODE_ID_ROLE) for index in rows})

    def _selection_changed(self, *_args: object) -> None:
        if self.workspace is None:
            return
        nodes = [self.workspace.tree.nodes[i] for i in self.selected_node_ids()]
        self.inspector.set_selection(self.controller, nodes)
        self.layer_views.select(nodes)

    def _plan_changed(self, names: list[str]) -> None:
        assert self.controller is not None
        self.tree_model.plan_changed(self.controller.resolved, names)
        self.inspector.refresh()
        self._update_totals()

    def _update_totals(self) -> None:
        if self.workspace is None or self.controller is None:
            self.totals.show_estimate(None)
            return
        self.totals.show_estimate(self.workspace.estimate(self.controller.resolved))

    def _filter_changed(self, text: str) -> None:
        self.proxy.set_filter_text(text)
        if text.strip():
            self.view.expandAll()

    # --- window ----------------------------------------------------------------------------
    def _update_title(self) -> None:
        parts = ["Compression Studio"]
        if self.workspace is not None:
            name = self.project_path.parent.name if self.project_path else \
                self.workspace.tree.model_name
            if self.session.is_scratch:  # Save Project As gives it a home
                name = f"{self.workspace.tree.model_name} (scratch)"
            parts.append(f"{name}{' *' if self.session.dirty else ''}")
        self.setWindowTitle(" — ".join(parts))

    def _update_status(self) -> None:
        if self.workspace is None:
            return
        tree = self.workspace.tree
        example = f"input {self.workspace.example}" if self.workspace.example else "no input"
        self.statusBar().showMessage(
            f"{tree.model_name} · {self.workspace.loaded.format} · {example} · "
            f"{len(tree) - 1} layers", 10000)

    def ask_stop_jobs(self) -> bool:
        answer = QMessageBox.question(
            self, "Jobs are running", "Stop the running jobs and close? Finished experiments "
            "are already saved in the project.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel)
        return answer == QMessageBox.StandardButton.Yes

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self.project.maybe_save():
            event.ignore()
            return
        if self.jobs.model.running_count() and not self.ask_stop_jobs():
            event.ignore()
            return
        self.jobs.shutdown()
        self.data.shutdown()
        QThreadPool.globalInstance().waitForDone(30_000)
        event.accept()
