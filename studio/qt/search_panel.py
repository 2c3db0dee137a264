"""The Search tab: the live trial table (status, fidelity reached, figures, why a trial
failed) with Pause, Resume and Stop. A thin view over the search controller's rows."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QModelIndex, Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from studio.core.jobs.events import Trial
from studio.qt.row_table import Index, RowTableModel

COLUMNS = ("trial", "status", "fidelity", "drop (pt)", "bytes ×", "MACs ×", "latency ×",
           "why it failed")
FIGURES = {3: "drop_pt", 4: "bytes", 5: "macs", 6: "latency"}


class TrialTable(RowTableModel[Trial]):
    """One row per trial, updated in place as its events arrive."""

    columns = COLUMNS

    def __init__(self) -> None:
        super().__init__()
        self._index: dict[int, int] = {}

    def data(self, index: Index,
             role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row, column = self.rows[index.row()], index.column()
        if role == Qt.ItemDataRole.ToolTipRole and column == 7:
            return row.reason or None
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if column == 0:
            return row.number
        if column == 1:
            return row.state
        if column == 2:
            return row.fidelity
        if column in FIGURES:
            value = row.figures.get(FIGURES[column])
            return None if value is None else f"{value:.3g}"
        return row.reason

    def update(self, trial: Trial) -> None:
        """Show ``trial``: a new row, or the trial's row with what it reached now (a proxy
        result stays shown while its full-fidelity run is under way)."""
        at = self._index.get(trial.number)
        if at is None:
            self.beginInsertRows(QModelIndex(), len(self.rows), len(self.rows))
            self._index[trial.number] = len(self.rows)
            self.rows.append(trial)
            self.endInsertRows()
            return
        if trial.state == "running" and not trial.figures:
            trial = Trial(trial.number, "running", trial.fidelity, self.rows[at].figures,
                          trial.params)
        self.rows[at] = trial
        self.row_changed(at)

    def clear(self) -> None:
        self.beginResetModel()
        self.rows, self._index = [], {}
        self.endResetModel()


class SearchPanel(QWidget):
    pauseRequested = Signal()
    resumeRequested = Signal()
    stopRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.table_model = TrialTable()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        top = QHBoxLayout()
        self.status = QLabel("No search yet: Compress ▸ Search…")
        top.addWidget(self.status, 1)
        self.pause_button = QPushButton("Pause")
        self.resume_button = QPushButton("Resume")
        self.stop_button = QPushButton("Stop")
        for button, signal in ((self.pause_button, self.pauseRequested),
                               (self.resume_button, self.resumeRequested),
                               (self.stop_button, self.stopRequested)):
            button.clicked.connect(signal.emit)
            button.setEnabled(False)
            top.addWidget(button)
        layout.addLayout(top)
        self.table = QTableView()
        self.table.setModel(self.table_model)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(
            len(COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)
        layout.addWidget(self.table, 1)

    def set_state(self, state: str, text: str) -> None:
        """``state``: running, paused or stopped (which buttons apply)."""
        self.status.setText(text)
        self.pause_button.setEnabled(state == "running")
        self.stop_button.setEnabled(state in ("running", "paused"))
        self.resume_button.setEnabled(state == "paused")
