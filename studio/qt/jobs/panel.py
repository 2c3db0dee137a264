"""The jobs panel: the jobs table with progress bars, Cancel, the selected job's log, a device."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionProgressBar,
    QStyleOptionViewItem,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from studio.qt.jobs.model import ENDED, PROGRESS, FractionRole, JobsModel
from studio.qt.jobs.runner import FAILED, SHUTDOWN_GRACE_MS, JobHandle


class ProgressDelegate(QStyledItemDelegate):
    """Paints the progress column as a native progress bar with the stage and percent on it."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        fraction = index.data(FractionRole)
        if fraction is None:
            super().paint(painter, option, index)
            return
        bar = QStyleOptionProgressBar()
        bar.rect = option.rect.adjusted(2, 2, -2, -2)
        bar.minimum, bar.maximum = 0, 1000
        bar.progress = round(fraction * 1000)
        bar.text = str(index.data(Qt.ItemDataRole.DisplayRole) or "")
        bar.textVisible = True
        bar.textAlignment = Qt.AlignmentFlag.AlignCenter
        bar.state = option.state | QStyle.StateFlag.State_Horizontal
        style = option.widget.style() if option.widget else QApplication.style()
        style.drawControl(QStyle.ControlElement.CE_ProgressBar, bar, painter)


def available_devices() -> list[tuple[str, str]]:
    """(label, device) pairs: the CPU, and CUDA only where torch sees a GPU."""
    devices = [("CPU", "cpu")]
    try:
        import torch

        if torch.cuda.is_available():
            devices.append((f"CUDA ({torch.cuda.get_device_name(0)})", "cuda"))
    except Exception:
        pass
    return devices


class JobsPanel(QWidget):
    """Submit jobs, watch them, cancel them, read their logs."""

    jobFinished = Signal(str, str, object)  # name, status, report or None

    def __init__(self, parent: QWidget | None = None, max_running: int = 1) -> None:
        super().__init__(parent)
        self.model = JobsModel(self, max_running=max_running)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setItemDelegateForColumn(PROGRESS, ProgressDelegate(self.table))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.setAlternatingRowColors(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        for column, width in enumerate((170, 80, 200, 70, 75)):
            self.table.setColumnWidth(column, width)

        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the selected job (within a second)")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_selected)
        self.device_combo = QComboBox()
        for label, device in available_devices():
            self.device_combo.addItem(label, device)
        self.device_combo.setToolTip("Where new jobs run")
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)

        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setPlaceholderText("Select a job to see its log")
        self.log_view.setMaximumBlockCount(5000)

        bar = QHBoxLayout()
        bar.addWidget(QLabel("Device:"))
        bar.addWidget(self.device_combo)
        bar.addStretch(1)
        bar.addWidget(self.cancel_button)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(self.log_view)
        splitter.setSizes([160, 140])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(bar)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.status_label)

        self.table.selectionModel().selectionChanged.connect(self._selection_changed)
        self.model.dataChanged.connect(self._update_buttons)
        self.model.logAppended.connect(self._log_appended)
        self.model.jobFinished.connect(self._job_finished)

    def device(self) -> str:
        """The chosen device for new jobs: "cpu" or "cuda"."""
        return str(self.device_combo.currentData())

    def submit(self, name: str, handle: JobHandle) -> None:
        """Add a job (it starts when a slot is free) and select it so its log shows."""
        number = self.model.add_job(name, handle)
        self.table.selectRow(number)

    def selected_row(self) -> int | None:
        rows = self.table.selectionModel().selectedRows()
        return rows[0].row() if rows else None

    def cancel_selected(self) -> None:
        number = self.selected_row()
        if number is not None:
            self.model.cancel(number)
            self._update_buttons()

    def shutdown(self, grace_ms: int = SHUTDOWN_GRACE_MS) -> None:
        """Stop every job and block until none runs (killing a child that has not stopped
        within ``grace_ms``): call from the window's closeEvent."""
        self.model.shutdown(grace_ms)

    def _selection_changed(self, *_: Any) -> None:
        number = self.selected_row()
        self.log_view.setPlainText("" if number is None else "\n".join(self.model.rows[number].log))
        self._update_buttons()

    def _log_appended(self, number: int, lines: list[str]) -> None:
        if number == self.selected_row():
            for line in lines:
                self.log_view.appendPlainText(line)

    def _update_buttons(self, *_: Any) -> None:
        number = self.selected_row()
        cancellable = number is not None and self.model.rows[number].status not in (
            *ENDED, "cancelling")
        self.cancel_button.setEnabled(cancellable)

    def _job_finished(self, name: str, status: str, report: object) -> None:
        row = self.model.rows[self.model.row_of(name)]
        self.status_label.setText(f"{name}: {row.error}" if status == FAILED
                                  else f"{name}: {status}")
        self._update_buttons()
        self.jobFinished.emit(name, status, report)
