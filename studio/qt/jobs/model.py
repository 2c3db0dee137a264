"""The jobs table: one row per job, updated from buffered events on timers, never per event.

A training job can send hundreds of progress events a second; applying each one to the view
would stall the event loop. Events only update the row's data; a ~15 Hz flush tells the view,
and elapsed time and the time-left estimate tick on a 1 Hz timer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import (
    QMetaObject,
    QModelIndex,
    QObject,
    Qt,
    QTimer,
    Signal,
)

from studio.core.jobs import Artifact, Event, Log, Metric, Progress, Result
from studio.qt.jobs.runner import CANCELLED, FAILED, FINISHED, SHUTDOWN_GRACE_MS, JobHandle
from studio.qt.row_table import Index, RowTableModel

COLUMNS = ("Name", "Status", "Progress", "Elapsed", "Time left", "Latest metric")
NAME, STATUS, PROGRESS, ELAPSED, LEFT, METRIC = range(len(COLUMNS))
#: The progress column's fraction (0–1, or None) for the delegate that paints it as a bar.
FractionRole = Qt.ItemDataRole.UserRole + 1
FLUSH_MS = 66  # ~15 Hz
TICK_MS = 1000
ENDED = (FINISHED, FAILED, CANCELLED)



def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class JobRow:
    """What the table knows about one job: plain data, written from events in the GUI thread."""

    name: str
    handle: JobHandle
    status: str = "queued"
    started: float | None = None
    ended: float | None = None
    stage: str = ""
    done: int = 0
    total: int = 0
    stage_started: float | None = None
    stage_first_done: int = 0
    metric: str = ""
    log: list[str] = field(default_factory=list)
    error: str = ""
    report: dict[str, Any] | None = None

    @property
    def fraction(self) -> float | None:
        if self.status == FINISHED:
            return 1.0
        return min(1.0, self.done / self.total) if self.total > 0 else None

    def elapsed(self, now: float) -> float | None:
        if self.started is None:
            return None
        return (self.ended or now) - self.started

    def time_left(self, now: float) -> float | None:
        """The current stage's time left, from its rate since its first event (stages differ too
        much to mix, and a stage's first step includes its set-up)."""
        if self.status not in ("running", "cancelling") or self.stage_started is None:
            return None
        steps = self.done - self.stage_first_done
        if steps <= 0 or self.total <= 0:
            return None
        return (now - self.stage_started) * max(0, self.total - self.done) / steps


class JobsModel(RowTableModel[JobRow]):
    """Jobs as rows; runs at most ``max_running`` at once and queues the rest."""

    columns = COLUMNS

    logAppended = Signal(int, list)  # row, new lines (sent at flush time)
    jobFinished = Signal(str, str, object)  # name, status, report or None

    def __init__(self, parent: QObject | None = None, max_running: int = 1) -> None:
        super().__init__(parent)
        self.max_running = max_running
        self._dirty: set[int] = set()
        self._new_lines: dict[int, list[str]] = {}
        self._flush = QTimer(self)
        self._flush.setInterval(FLUSH_MS)
        self._flush.timeout.connect(self.flush)
        self._tick = QTimer(self)
        self._tick.setInterval(TICK_MS)
        self._tick.timeout.connect(self._tick_times)
        self.view_updates = 0  # how many dataChanged the flushes sent (tests check throttling)
        self._connections: list[QMetaObject.Connection] = []
        self._shut_down = False

    # --- Qt model API -----------------------------------------------------------------------
    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self.rows):
            return None
        row, column = self.rows[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(row, column)
        if role == FractionRole and column == PROGRESS:
            return row.fraction
        if role == Qt.ItemDataRole.ToolTipRole:
            if column == STATUS and row.error:
                return row.error
            if column == LEFT:
                return "estimated from the current stage's rate so far"
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (ELAPSED, LEFT):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def _display(self, row: JobRow, column: int) -> str:
        now = time.monotonic()
        if column == NAME:
            return row.name
        if column == STATUS:
            return row.status
        if column == PROGRESS:
            if row.status in ENDED:  # not the last stage's "fine-tune 100%" forever after
                return "done" if row.status == FINISHED else ""
            fraction = row.fraction
            percent = "" if fraction is None else f"{fraction:.0%}"
            return f"{row.stage} {percent}".strip()
        if column == ELAPSED:
            return format_seconds(row.elapsed(now))
        if column == LEFT:
            return format_seconds(row.time_left(now))
        if column == METRIC:
            return row.metric
        return ""

    # --- jobs -------------------------------------------------------------------------------
    def add_job(self, name: str, handle: JobHandle) -> int:
        """Add a job; it starts now, or when a running one ends if ``max_running`` are busy.

        The model becomes the job's parent, so the job, its process and its timers are deleted
        with the model, in the GUI thread (not by a garbage collection in some other thread)."""
        number = len(self.rows)
        self.beginInsertRows(QModelIndex(), number, number)
        row = JobRow(name, handle)
        self.rows.append(row)
        self.endInsertRows()
        handle.setParent(self)
        self._connections += [
            handle.event.connect(lambda event, r=row: self._on_event(r, event)),
            handle.finished.connect(lambda *end, r=row: self._on_finished(r, *end))]
        self._start_queued()
        return number

    def row_of(self, name: str) -> int:
        return next(i for i, row in enumerate(self.rows) if row.name == name)

    def cancel(self, number: int) -> None:
        row = self.rows[number]
        if row.status in ENDED:
            return
        if row.handle.started:
            row.status = "cancelling"
            self._mark(number)
        row.handle.cancel()

    def running_count(self) -> int:
        return sum(1 for row in self.rows if row.status in ("running", "cancelling"))

    def _start_queued(self) -> None:
        if self._shut_down:
            return
        for number, row in enumerate(self.rows):
            if self.running_count() >= self.max_running:
                break
            if row.status == "queued" and not row.handle.done:
                row.status = "running"
                row.started = time.monotonic()
                self._mark(number)
                self._tick.start()
                row.handle.start()

    def _on_event(self, row: JobRow, event: Event) -> None:
        lines: list[str] = []
        if isinstance(event, Progress):
            if event.stage != row.stage:
                row.stage, row.stage_started = event.stage, time.monotonic()
                row.stage_first_done = event.done
            row.done, row.total = event.done, event.total
        elif isinstance(event, Metric):
            row.metric = f"{event.stage} {event.name} {event.value:.4g}"
        elif isinstance(event, Log):
            prefix = "" if event.level == "info" else f"{event.level.upper()}: "
            lines.append(prefix + event.message)
        elif isinstance(event, Artifact):
            lines.append(f"wrote {event.kind}: {event.path}")
        elif isinstance(event, Result):
            row.report = event.report
        self._append(row, lines)
        self._mark(self.rows.index(row))

    def _on_finished(self, row: JobRow, status: str, report: object, error: str) -> None:
        row.status, row.error = status, error
        row.ended = time.monotonic()
        if isinstance(report, dict):
            row.report = report
        if status == FAILED:
            self._append(row, [f"FAILED: {error}"])
        else:
            self._append(row, [f"{status}"])
        number = self.rows.index(row)
        self._mark(number)
        self.flush()  # an end is shown at once, not at the next tick
        self.jobFinished.emit(row.name, status, row.report)
        self._start_queued()
        if not self.running_count():
            self._tick.stop()

    def _append(self, row: JobRow, lines: list[str]) -> None:
        if lines:
            row.log.extend(lines)
            self._new_lines.setdefault(self.rows.index(row), []).extend(lines)

    def _mark(self, number: int) -> None:
        self._dirty.add(number)
        if not self._flush.isActive():
            self._flush.start()

    def flush(self) -> None:
        """Tell the views about every row changed since the last flush, one signal per row."""
        self._flush.stop()
        dirty, self._dirty = sorted(self._dirty), set()
        for number in dirty:
            self.view_updates += 1
            self.row_changed(number)
        lines, self._new_lines = self._new_lines, {}
        for number, new in lines.items():
            self.logAppended.emit(number, new)

    def _tick_times(self) -> None:
        for number, row in enumerate(self.rows):
            if row.status in ("running", "cancelling"):
                self.dataChanged.emit(self.index(number, ELAPSED), self.index(number, LEFT))

    def shutdown(self, grace_ms: int = SHUTDOWN_GRACE_MS) -> None:
        """Stop every job and block until none runs (on quit: no thread or process outlives
        the window). A job that ends starts no queued one; afterwards the model's timers are
        stopped and no job's signal reaches it, so nothing arrives at a deleted object."""
        self._shut_down = True
        for row in self.rows:
            row.handle.shutdown(grace_ms)
        self._flush.stop()
        self._tick.stop()
        for connection in self._connections:
            QObject.disconnect(connection)
        self._connections.clear()
