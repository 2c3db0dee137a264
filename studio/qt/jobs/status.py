"""The running job in the status bar: its name, stage, a progress bar and the time left, so a
job that starts is seen wherever the user is in the window; hidden when no job runs."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QWidget

from studio.qt.jobs.model import JobsModel, format_seconds


class JobStatus(QWidget):
    def __init__(self, model: JobsModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.label = QLabel()
        self.bar = QProgressBar()
        self.bar.setMaximumWidth(140)
        self.bar.setTextVisible(True)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.bar)
        for signal in (model.dataChanged, model.rowsInserted, model.modelReset):
            signal.connect(self.refresh)
        self.refresh()

    def refresh(self, *_args: Any) -> None:
        running = [row for row in self.model.rows if row.status in ("running", "cancelling")]
        self.setVisible(bool(running))
        if not running:
            return
        row = running[0]
        left = row.time_left(time.monotonic())
        more = f" (+{len(running) - 1} more)" if len(running) > 1 else ""
        self.label.setText(f"{row.name}{more}: {row.stage or 'starting'}"
                           + (f" · {format_seconds(left)} left" if left is not None else ""))
        fraction = row.fraction
        if fraction is None:
            self.bar.setRange(0, 0)  # busy: no total known yet
        else:
            self.bar.setRange(0, 100)
            self.bar.setValue(round(fraction * 100))
