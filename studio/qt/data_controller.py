"""Connects the Data tab to the open workspace: stores its section (undoably), browses for
paths, checks the data in the background and asks consent before a data function runs.

The section lives in ``workspace.stages["data"]``, so it is saved in ``project.yaml``, exported
with recipes and read by every job, which runs from the project.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydantic import ValidationError
from PySide6.QtCore import QObject

from studio.core.data.sources import load_task
from studio.core.data.task import TaskData, model_inputs
from studio.core.engine.data_fit import check_data_fits
from studio.core.errors import StudioError
from studio.core.plan.stages import DataSection
from studio.core.workspace import portable_path
from studio.qt.data_panel import DataPanel
from studio.qt.plots.metric import metric_axis

if TYPE_CHECKING:
    from studio.qt.main_window import MainWindow
    from studio.qt.plan_controller import PlanController

FILE_FILTERS = {
    "arrays": "Arrays (*.npz *.npy);;All (*)",
    "csv": "CSV (*.csv *.tsv *.txt);;All (*)",
}


class DataController(QObject):
    def __init__(self, window: MainWindow, panel: DataPanel) -> None:
        super().__init__(window)
        self.window = window
        self.panel = panel
        self.controller: PlanController | None = None
        self.trusted: set[str] = set()
        """Functions the user allowed to run in this session."""
        panel.edited.connect(self._edited)
        panel.browseRequested.connect(self.browse)
        panel.checkRequested.connect(self.check)

    @property
    def section(self) -> DataSection | None:
        workspace = self.window.workspace
        return workspace.stages.get("data") if workspace is not None else None

    def base_dir(self) -> Path | None:
        """Relative data paths are read from the project's folder."""
        return self.window.project_path.parent if self.window.project_path else None

    def attach(self, controller: PlanController) -> None:
        """A workspace was opened: show its section and follow its undo stack."""
        self.controller = controller
        controller.stagesChanged.connect(self._stage_changed)
        self.panel.setEnabled(True)
        self.panel.set_section(self.section)
        self.panel.show_check("Check the data to see its splits and shapes.")

    # --- edits -----------------------------------------------------------------------------
    def _edited(self, section: DataSection | None) -> None:
        if self.controller is not None:
            self.controller.set_stage("data", section)

    def _stage_changed(self, key: str) -> None:
        """Undo/redo (or a restored plan) changed the section: show it, unless the form
        already holds it (the change came from the form, mid-typing)."""
        if key != "data":
            return
        try:
            shown = self.panel.section()
        except ValidationError:
            shown = False  # never equal to a stored section
        if shown != self.section:
            self.panel.set_section(self.section)

    def browse(self, which: str) -> None:
        """A folder dialog for image folders, a file dialog for arrays and CSV."""
        source = self.panel.source.currentData()
        caption = "Test data" if which == "test_path" else "Data"
        if source == "images":
            path = self.window.ask_path("folder", f"{caption}: image folder")
        else:
            path = self.window.ask_path("open", f"{caption} file",
                                        FILE_FILTERS.get(source, "All (*)"))
        if path:
            self.panel.set_path(which, portable_path(path, self.base_dir()))

    # --- consent ---------------------------------------------------------------------------
    def consent(self, section: DataSection | None) -> bool:
        """True when ``section`` runs no code, or the user allows its function (asked once a
        session per function)."""
        if section is None or section.source != "function":
            return True
        function = str(section.path)
        if function in self.trusted:
            return True
        if not self.window.confirm_function(function):
            self.window.show_info(f"The data function {function} was not run: it needs your "
                                  "consent.")
            return False
        self.trusted.add(function)
        return True

    def job_trust(self) -> bool | None:
        """For a job about to start: whether it may run the data function; ``None`` when the
        user refused (the job must not start)."""
        section = self.section
        if not self.consent(section):
            return None
        return section is not None and section.source == "function"

    # --- check -----------------------------------------------------------------------------
    def check(self) -> None:
        """Load the data in a worker thread and show its splits, labels, metric and shapes."""
        workspace = self.window.workspace
        if workspace is None:
            return
        try:
            section = self.panel.section() or DataSection()
        except ValidationError:
            return  # the form already says what is wrong
        if not self.consent(section):
            self.panel.show_check("Not loaded: the function needs your consent.", ok=False)
            return
        trust = section.source == "function"
        base = self.base_dir()
        checked = workspace.loaded.module is None or workspace.example is not None
        self.panel.show_check("Loading…")
        self.panel.check_button.setEnabled(False)

        def load_and_check() -> tuple[TaskData, str | None]:
            task = load_task(section, base, trust=trust)
            try:
                check_data_fits(workspace, task)
            except StudioError as error:  # a shape, dtype or input the model cannot take
                return task, str(error)
            return task, None

        def done(result: tuple[TaskData, str | None]) -> None:
            self.panel.check_button.setEnabled(True)
            self.panel.show_check(describe_task(*result, checked=checked))

        def failed(error: BaseException) -> None:
            self.panel.check_button.setEnabled(True)
            self.panel.show_check(str(error), ok=False)

        self.window.run_in_background(load_and_check, done, failed, "Loading the data…")


SPLIT_NAMES = {"train": "training split", "fine_tune": "fine-tuning", "calibration":
               "calibration", "test": "test (evaluation)"}


def _shape(shape: tuple[int, ...] | torch.Size) -> str:
    return "×".join(str(d) for d in shape) or "scalar"


def describe_task(task: TaskData, problem: str | None, checked: bool = True) -> str:
    """Sizes per split, labels, metric, the sample shape, and whether the data fits the model
    (``problem`` says why not; nothing is claimed when it could not be ``checked``) (HTML)."""
    summary = task.summary()
    rows = [(SPLIT_NAMES.get(name, name), f"{count:,}")
            for name, count in summary["sizes"].items()]
    labels = f"yes, {task.num_classes} classes" if task.labelled and task.num_classes else \
        "yes" if task.labelled else "no: scored by agreement with the uncompressed model"
    rows += [("labelled", labels), ("metric", metric_axis(task.metric).label.lower())]
    inputs = model_inputs(task.test)
    for name, values in (inputs if isinstance(inputs, dict) else {"": inputs}).items():
        rows.append((f"sample {name}".strip(),
                     f"{_shape(values.shape[1:])} {str(values.dtype).removeprefix('torch.')}"))
    rows += [(f"constant {name}", str(value.tolist()) if value.size <= 4 else
              f"{_shape(value.shape)} {value.dtype}") for name, value in task.constants.items()]
    table = "".join(f"<tr><td>{html.escape(key)}&nbsp;&nbsp;</td><td><b>{html.escape(value)}"
                    "</b></td></tr>" for key, value in rows)
    verdict = f"<p style='color:#b00020'>✗ Does not fit the model: {html.escape(problem)}</p>" \
        if problem else "<p style='color:#1b5e20'>✓ fits the model's input</p>" \
        if checked else ""
    return f"<b>{html.escape(task.name)}</b><table>{table}</table>{verdict}"
