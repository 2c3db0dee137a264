"""Runs the compression search for the open project in a child process and keeps the Search tab
and the Experiments plot in step: every trial updates its row as it runs and finishes, and each
full-fidelity trial, which the search saves into the project as an experiment, joins the plot
(click it to restore its plan, as for any experiment).

Pause stops the child and keeps the study (``<project>/search/search.db``); Resume starts the
same search on it again, which carries on without redoing finished trials. Stop ends it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from studio.core.jobs import Progress
from studio.core.jobs.events import Trial
from studio.core.methods.elastic.training import STAGE as SUPERNET_STAGE
from studio.core.search.estimate import estimate_search_s
from studio.core.search.settings import SearchSettings
from studio.qt.compress_controller import CompressController
from studio.qt.jobs import ProcessJob
from studio.qt.search_panel import SearchPanel
from studio.qt.session import QtSession

SEARCH_DIR = "search"
FULL_S = 30.0
"""Seconds of a full-fidelity trial when the project has no finished run to go by."""

AskSearch = Callable[[SearchSettings, Callable[[SearchSettings], float]],
                     SearchSettings | None]


class SearchController(QObject):
    notice = Signal(str, str)
    trialUpdated = Signal(object)
    """A :class:`Trial` event, once its row is updated."""
    stateChanged = Signal(str)
    """running, paused, stopped or finished."""

    def __init__(self, session: QtSession, compress: CompressController, panel: SearchPanel,
                 ask_search: AskSearch, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session, self.compress, self.panel = session, compress, panel
        self.ask_search = ask_search
        self.settings = SearchSettings()
        self.job: ProcessJob | None = None
        self.state = "idle"
        self._pausing = False
        self._started = 0.0
        panel.pauseRequested.connect(self.pause)
        panel.resumeRequested.connect(self.resume)
        panel.stopRequested.connect(self.stop)

    def estimate_s(self, settings: SearchSettings) -> float:
        """From the project's finished runs (their time) and a proxy trial's usual cost."""
        runs = [e.report.get("elapsed_s") for e in self.session.core.experiments.values()
                if e.report and e.report.get("elapsed_s")]
        full = sum(runs) / len(runs) if runs else FULL_S
        return estimate_search_s(settings, full_s=full)

    def choose(self) -> ProcessJob | None:
        if self.session.core.workspace is None:
            return None
        chosen = self.ask_search(self.settings, self.estimate_s)
        return None if chosen is None else self.start(chosen)

    def start(self, settings: SearchSettings, fresh: bool = True) -> ProcessJob | None:
        if self.job is not None and not self.job.done:
            self.notice.emit("info", "A search is already running; stop it first.")
            return None
        consent = self.compress._job_trust()
        folder = self.compress._require_project() if consent is not None else None
        if folder is None:
            return None
        self.settings = settings
        options: dict[str, Any] = {**settings.model_dump(mode="json"),
                                   "project_dir": str(folder)}
        job = self.compress._start("search", Path(folder) / SEARCH_DIR, consent, options)
        if job is None:
            return None
        if fresh:
            self.panel.table_model.clear()
        self.job, self._pausing, self._started = job, False, time.monotonic()
        job.event.connect(self._on_event)
        job.finished.connect(self._finished)
        self.compress.jobs.submit("search", job)
        self._set_state("running", f"Searching: {settings.trials} trials")
        return job

    def pause(self) -> None:
        if self.job is not None and not self.job.done:
            self._pausing = True
            self.job.cancel()

    def resume(self) -> ProcessJob | None:
        return self.start(self.settings, fresh=False)

    def stop(self) -> None:
        if self.job is not None and not self.job.done:
            self.job.cancel()
        else:
            self._set_state("stopped", "Search stopped; its trials are kept in the project.")

    def _on_event(self, event: object) -> None:
        if isinstance(event, Trial):
            self.panel.table_model.update(event)
            if event.fidelity == "full" and event.state == "complete" and event.experiment:
                self.session.core.adopt_experiment(event.experiment)
            self.trialUpdated.emit(event)
        elif isinstance(event, Progress) and event.done and event.stage == SUPERNET_STAGE:
            self.panel.status.setText(f"Training the supernet once (then the subnets are "
                                      f"searched): step {event.done}/{event.total}")
        elif isinstance(event, Progress) and event.done:
            elapsed = time.monotonic() - self._started
            rows = self.panel.table_model.rows
            ran = sum(1 for row in rows if row.state != "running") or 1
            left = elapsed / ran * max(0, event.total - event.done)
            self.panel.status.setText(f"Searching: {event.done}/{event.total} trials, about "
                                      f"{left / 60:.1f} min left")

    def _finished(self, status: str, report: dict[str, Any] | None, error: str) -> None:
        if status == "failed":
            self.notice.emit("error", f"The search failed: {error}")
            self._set_state("stopped", f"Search failed: {error}")
        elif status == "cancelled" and self._pausing:
            self._set_state("paused", "Paused; Resume carries on where it stopped.")
        elif status == "cancelled":
            self._set_state("stopped", "Search stopped; its trials are kept in the project.")
        else:
            count = len(report.get("trials", [])) if report else 0
            self._set_state("finished", f"Search finished: {count} trials.")

    def _set_state(self, state: str, text: str) -> None:
        self.state = state
        self.panel.set_state(state, text)
        self.stateChanged.emit(state)
