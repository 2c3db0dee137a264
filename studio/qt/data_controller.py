"""Connects the Data tab to the open workspace: stores its section (undoably), browses for
paths, checks the data in a child process and asks consent before a data function runs.

Consent is for a function's code (its module files and their content), not its name: another
project's ``loader.py``, or this one once edited, is asked about again. Check Data runs in a
child process like any job, so a data file that inflates to gigabytes or a loader that crashes
cannot take the window down.

The section lives in ``workspace.stages["data"]``, so it is saved in ``project.yaml``, exported
with recipes and read by every job, which runs from the project. The controller reads the open
workspace through the session, asks its questions through the callables it is given and says
what happened through :attr:`DataController.notice`; it never touches the window.
"""

from __future__ import annotations

import html
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from PySide6.QtCore import QObject, Signal

from studio.core.data.consent import FunctionCode, data_functions
from studio.core.data.split import metric_for_output
from studio.core.engine.data_check import PROBE_FILE, probe_task
from studio.core.engine.data_fit import check_data_fits, input_vocabulary
from studio.core.errors import StudioError
from studio.core.jobs.kinds import JobSpec
from studio.core.plan.stages import DataSection
from studio.core.workspace import Workspace, portable_path
from studio.qt.data_panel import DataPanel
from studio.qt.jobs import CANCELLED, FINISHED, ProcessJob
from studio.qt.plots.metric import metric_axis
from studio.qt.session import QtSession

FILE_FILTERS = {
    "arrays": "Arrays (*.npz *.npy);;All (*)",
    "csv": "CSV (*.csv *.tsv *.txt);;All (*)",
}


Background = Callable[[Callable[[], Any], Callable[[Any], None],
                       Callable[[BaseException], None], str], None]
"""Runs a task in a worker thread: ``(task, done, failed, status message)``."""


class DataController(QObject):
    notice = Signal(str, str)
    """(kind, message): ``"error"`` or ``"info"``, for the window's notice bar."""

    def __init__(self, session: QtSession, panel: DataPanel,
                 ask_path: Callable[[str, str, str], str | None],
                 confirm_function: Callable[[str, str | None], bool],
                 run_in_background: Background, parent: QObject | None = None) -> None:
        """``ask_path(kind, caption, filter)``: a path from a file or folder dialog (``None``:
        cancelled); ``confirm_function(target, file)``: consent to run a data function;
        ``run_in_background``: see :data:`Background`."""
        super().__init__(parent)
        self.session = session
        self.panel = panel
        self.ask_path = ask_path
        self.confirm_function = confirm_function
        self.run_in_background = run_in_background
        self.allowed: set[FunctionCode] = set()
        """The data functions' code the user allowed to run in this session."""
        self.check_job: ProcessJob | None = None
        panel.edited.connect(self._edited)
        panel.browseRequested.connect(self.browse)
        panel.checkRequested.connect(self.check)
        session.opened.connect(self._opened)

    @property
    def section(self) -> DataSection | None:
        workspace = self.session.core.workspace
        return workspace.stages.get("data") if workspace is not None else None

    def base_dir(self) -> Path | None:
        """Relative data paths are read from the project's folder."""
        return self.session.core.base_dir

    def _opened(self) -> None:
        """A workspace was opened: show its section and follow its undo stack."""
        assert self.session.plan is not None
        self.session.plan.stagesChanged.connect(self._stage_changed)
        self.panel.setEnabled(True)
        self.panel.set_section(self.section)
        self.panel.show_check("Check the data to see its splits and shapes.")

    # --- edits -----------------------------------------------------------------------------
    def _edited(self, section: DataSection | None) -> None:
        if self.session.plan is not None:
            self.session.plan.set_stage("data", section)

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
            path = self.ask_path("folder", f"{caption}: image folder", "")
        else:
            path = self.ask_path("open", f"{caption} file",
                                        FILE_FILTERS.get(source, "All (*)"))
        if path:
            self.panel.set_path(which, portable_path(path, self.base_dir()))

    # --- consent ---------------------------------------------------------------------------
    def consent(self, section: DataSection | None) -> tuple[FunctionCode, ...] | None:
        """The code ``section`` runs (none for files), each piece allowed by the user (asked
        once a session per file content); ``None`` when they refused. A function whose module
        cannot be found raises its StudioError."""
        codes = data_functions(section, self.base_dir())
        for code in codes:
            if code in self.allowed:
                continue
            if not self.confirm_function(code.target, code.module_file):
                self.notice.emit("info", f"The data function {code.target} was not run: it "
                                         "needs your consent.")
                return None
            self.allowed.add(code)
        return codes

    def job_consent(self) -> tuple[FunctionCode, ...] | None:
        """For a job about to start: the data function code it may run; ``None`` when the user
        refused or the function cannot be found (said in a notice): the job must not start."""
        try:
            return self.consent(self.section)
        except StudioError as error:
            self.notice.emit("error", str(error))
            return None

    # --- check -----------------------------------------------------------------------------
    def check(self) -> None:
        """Load the data in a child process and show its splits, labels, metric and shapes."""
        workspace = self.session.core.workspace
        if workspace is None or self.check_job is not None:
            return
        try:
            section = self.panel.section() or DataSection()
        except ValidationError:
            return  # the form already says what is wrong
        try:
            codes = self.consent(section)
        except StudioError as error:
            self.panel.show_check(str(error), ok=False)
            return
        if codes is None:
            self.panel.show_check("Not loaded: the function needs your consent.", ok=False)
            return
        base = self.base_dir()
        recipe = workspace.to_recipe(base=base).model_copy(update={"data": section})
        out_dir = Path(tempfile.mkdtemp(prefix="studio-check-"))
        spec = JobSpec("check_data", recipe, base, out_dir,
                       options={"vocabulary": input_vocabulary(workspace.loaded)},
                       data_consent=[code.to_json() for code in codes])
        job = ProcessJob(spec.to_json(), self)
        job.finished.connect(lambda status, report, error: self._checked(
            workspace, section, out_dir, status, report, error))
        self.check_job = job
        self.panel.show_check("Loading…")
        self.panel.check_button.setEnabled(False)
        job.start()

    def _checked(self, workspace: Workspace, section: DataSection, out_dir: Path, status: str,
                 report: dict[str, Any] | None, error: str) -> None:
        """The child read the data: run the model on its probe samples (here, where the model
        is loaded), then show the result."""
        job, self.check_job = self.check_job, None
        if job is not None:
            job.deleteLater()
        probe = None
        if status == FINISHED and report is not None:
            try:
                with np.load(out_dir / PROBE_FILE, allow_pickle=False) as archive:
                    probe = {name: archive[name] for name in archive.files}
            except (OSError, ValueError):
                report, error = None, "the data check left no samples to try"
        shutil.rmtree(out_dir, ignore_errors=True)
        if status != FINISHED or report is None or probe is None:
            self.panel.check_button.setEnabled(True)
            self.panel.show_check("Check cancelled." if status == CANCELLED else error, ok=False)
            return
        checked = (not workspace.loaded.capabilities.traces_example
                   or workspace.example is not None)

        def fits() -> dict[str, Any]:
            """Whether the probe feeds the model, and the metric its output settles."""
            if report["problem"] is not None:
                return {"problem": report["problem"]}
            task = probe_task(report, probe)
            try:
                output = check_data_fits(workspace.loaded, workspace.example, task)
                if output is not None:
                    task = metric_for_output(section, task, *output, "data")
            except StudioError as problem:  # a shape, dtype or input the model cannot take
                return {"problem": str(problem)}
            return {"problem": None, "metric": task.metric, "metric_reason": task.metric_reason}

        def done(found: dict[str, Any]) -> None:
            self.panel.check_button.setEnabled(True)
            self.panel.show_check(describe_check(report | found | {"checked": checked}))

        def failed(failure: BaseException) -> None:
            self.panel.check_button.setEnabled(True)
            self.panel.show_check(str(failure), ok=False)

        self.run_in_background(fits, done, failed, "Trying the data on the model…")

    def shutdown(self, msecs: int = 3000) -> None:
        """Stop a running check (the window is closing): no process outlives the window."""
        if self.check_job is not None:
            self.check_job.cancel()
            self.check_job.wait(msecs)


SPLIT_NAMES = {"train": "training split", "fine_tune": "fine-tuning", "calibration":
               "calibration", "test": "test (evaluation)"}


def describe_check(report: dict[str, Any]) -> str:
    """Sizes per split, labels, metric, the sample shape, and whether the data fits the model
    (its ``problem`` says why not; nothing is claimed when it was not ``checked``) (HTML)."""
    rows = [(SPLIT_NAMES.get(name, name), f"{count:,}")
            for name, count in report["sizes"].items()]
    classes = report.get("num_classes")
    labels = f"yes, {classes} classes" if report["labelled"] and classes else \
        "yes" if report["labelled"] else "no: scored by agreement with the uncompressed model"
    metric, reason = report["metric"], report.get("metric_reason")
    shown = reason if metric == "auto" else metric_axis(metric).label.lower() + (
        f" ({reason})" if reason else "")
    rows += [("labelled", labels), ("metric", shown)]
    rows += [(f"sample {name}".strip(), text) for name, text in report["samples"]]
    rows += [(f"constant {name}", text) for name, text in report["constants"]]
    table = "".join(f"<tr><td>{html.escape(key)}&nbsp;&nbsp;</td><td><b>{html.escape(value)}"
                    "</b></td></tr>" for key, value in rows)
    problem = report.get("problem")
    verdict = f"<p style='color:#b00020'>✗ Does not fit the model: {html.escape(problem)}</p>" \
        if problem else "<p style='color:#1b5e20'>✓ fits the model's input</p>" \
        if report.get("checked") else ""
    return f"<b>{html.escape(report['name'])}</b><table>{table}</table>{verdict}"
