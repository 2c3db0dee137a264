"""The experiments table beside the Pareto plot: one row per finished experiment, with its name
and notes editable in place, the date and the figures a user sorts by.

The model reads the session's experiments (the core keeps them); edits go back through the
``edit`` callback it is given, so renaming and annotating are saved by the core. The view only
asks for a context menu; the results controller fills it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from PySide6.QtCore import (
    QPoint,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView, QWidget

from studio.core.project.experiments import Experiment, experiment_point
from studio.core.units import format_bytes
from studio.qt.plots.metric import metric_axis
from studio.qt.row_table import Index, RowTableModel

COLUMNS = ("Name", "Date", "Metric", "Size", "Latency", "MACs", "Notes")
NAME, DATE, METRIC, SIZE, LATENCY, MACS, NOTES = range(len(COLUMNS))
EDITABLE = {NAME: "name", NOTES: "note"}
ID_ROLE = Qt.ItemDataRole.UserRole + 1
SORT_ROLE = Qt.ItemDataRole.UserRole + 2
EMPTY_TEXT = ("No experiments yet. Plan some compression in the tree, then Compress ▸ Run Plan "
              "(Ctrl+R): each finished run lands here and on the plot.")


def local_date(iso: str) -> str:
    """``2026-11-30T02:40:50.123+00:00`` in the user's time zone, to the minute."""
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


class ExperimentsModel(RowTableModel[Experiment]):
    columns = COLUMNS

    def __init__(self, edit: Callable[[str, str, str], None], parent: Any = None) -> None:
        """``edit(experiment_id, field, text)`` saves a rename (``name``) or note (``note``)."""
        super().__init__(parent)
        self._edit = edit

    def set_experiments(self, experiments: Mapping[str, Experiment]) -> None:
        self.beginResetModel()
        self.rows = list(experiments.values())
        self.endResetModel()

    def experiment(self, row: int) -> Experiment:
        return self.rows[row]

    def row_of(self, experiment_id: str) -> int:
        return next((i for i, e in enumerate(self.rows) if e.id == experiment_id), -1)

    def flags(self, index: Index) -> Qt.ItemFlag:
        flags = super().flags(index)
        return flags | Qt.ItemFlag.ItemIsEditable if index.column() in EDITABLE else flags

    def _cell(self, experiment: Experiment, column: int) -> tuple[str, Any]:
        """(text, sort key) of one cell."""
        point = experiment_point(experiment)
        if column == NAME:
            return experiment.name, experiment.name.lower()
        if column == DATE:
            return local_date(experiment.created), experiment.created
        if column == METRIC:
            value = point["value"]
            return metric_axis(point["metric"]).text(value), value if value is not None else -1
        if column == SIZE:
            size = point["onnx_bytes"]
            return ("—", -1) if size is None else (format_bytes(size), size)
        if column == LATENCY:
            latency = point["latency_ms"]
            return ("—", -1) if latency is None else (f"{latency:.3g} ms", latency)
        if column == MACS:
            macs = point["macs"]
            return ("—", -1) if macs is None else (f"{macs / 1e6:.3g} M", macs)
        return experiment.note, experiment.note.lower()

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        experiment = self.rows[index.row()]
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole):
            return self._cell(experiment, index.column())[0]
        if role == SORT_ROLE:
            return self._cell(experiment, index.column())[1]
        if role == ID_ROLE:
            return experiment.id
        if role == Qt.ItemDataRole.ToolTipRole and index.column() == NOTES:
            return experiment.note or "Double-click to add a note"
        return None

    def setData(self, index: Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        field = EDITABLE.get(index.column())
        if field is None or role != Qt.ItemDataRole.EditRole:
            return False
        self._edit(self.rows[index.row()].id, field, str(value))
        return True


class ExperimentsTable(QTableView):
    """The sortable view; a right-click asks for the menu of the experiment under it."""

    menuRequested = Signal(str, QPoint)
    """(experiment id, global position)."""

    def __init__(self, model: ExperimentsModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.source = model
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(model)
        self.proxy.setSortRole(SORT_ROLE)
        self.setModel(self.proxy)
        self.setSortingEnabled(True)
        self.sortByColumn(DATE, Qt.SortOrder.AscendingOrder)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                             | QAbstractItemView.EditTrigger.EditKeyPressed)
        self.setAlternatingRowColors(True)
        self.verticalHeader().setVisible(False)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(NOTES, QHeaderView.ResizeMode.Stretch)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)
        self.setToolTip("Double-click a name or note to edit it; right-click for export, "
                        "report, compare and delete")

    def selected_ids(self) -> list[str]:
        return [self.proxy.data(index, ID_ROLE) for index in
                sorted(self.selectionModel().selectedRows(), key=lambda i: i.row())]

    def select(self, experiment_id: str) -> None:
        row = self.source.row_of(experiment_id)
        if row >= 0:
            self.selectRow(self.proxy.mapFromSource(self.source.index(row, 0)).row())

    def _menu(self, position: QPoint) -> None:
        index = self.indexAt(position)
        if index.isValid():
            self.menuRequested.emit(self.proxy.data(index, ID_ROLE),
                                    self.viewport().mapToGlobal(position))

    def paintEvent(self, event: Any) -> None:
        """An empty table says how to fill it instead of showing a blank grid."""
        super().paintEvent(event)
        if self.source.rowCount() == 0:
            painter = QPainter(self.viewport())
            painter.setPen(self.palette().placeholderText().color())
            painter.drawText(self.viewport().rect().adjusted(12, 12, -12, -12),
                             Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, EMPTY_TEXT)
