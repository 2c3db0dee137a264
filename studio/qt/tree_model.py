"""``QAbstractItemModel`` over the core :class:`LayerTree`: no copy, rows made on demand.

Indexes carry the node id as their internal id, so ``index``/``parent``/``data`` are list lookups
and a 10k-module model costs nothing until rows are shown.
"""

from __future__ import annotations

from PySide6.QtCore import QAbstractItemModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QColor, QFont

from studio.core.graph.tree import LayerNode, LayerTree
from studio.core.plan import Plan, ResolvedSpec
from studio.core.reports.sensitivity_report import SensitivityReport
from studio.qt.columns import COLUMNS, PLAN_COLUMNS, SENSITIVITY_COLUMN, SQNR_COLUMN
from studio.qt.plots.metric import MetricAxis, metric_axis

SORT_ROLE = Qt.ItemDataRole.UserRole + 1
FILTER_ROLE = Qt.ItemDataRole.UserRole + 2
NODE_ID_ROLE = Qt.ItemDataRole.UserRole + 3
INHERITED_ROLE = Qt.ItemDataRole.UserRole + 4

_INHERITED_COLOUR = QColor(130, 130, 130)
SQNR_GOOD_DB, SQNR_BAD_DB = 30.0, 10.0
"""Green at or above, red at or below (int8 weights usually sit near 40 dB, int4 near 20)."""


def health_colour(badness: float) -> QColor:
    """Pale green (0) through yellow to pale red (1): a cell's background."""
    badness = min(max(badness, 0.0), 1.0)
    return QColor.fromHsvF((1.0 - badness) / 3.0, 0.35, 1.0)
_ALIGN_NUMBER = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
_Index = QModelIndex | QPersistentModelIndex
_TOP = QModelIndex()


class LayerTreeModel(QAbstractItemModel):
    def __init__(self, tree: LayerTree | None = None,
                 resolved: list[ResolvedSpec] | None = None, parent=None) -> None:
        super().__init__(parent)
        self._tree = tree
        self._resolved = resolved or (Plan().resolve(tree) if tree is not None else [])
        self._sensitivity: dict[str, tuple[float, str]] = {}
        self._sensitivity_metric: MetricAxis = metric_axis(None)
        self._sqnr: dict[str, float] = {}
        self._italic = QFont()
        self._italic.setItalic(True)
        self._bold = QFont()
        self._bold.setBold(True)

    @property
    def tree(self) -> LayerTree | None:
        return self._tree

    def set_tree(self, tree: LayerTree | None, resolved: list[ResolvedSpec]) -> None:
        self.beginResetModel()
        self._tree = tree
        self._resolved = resolved
        self.endResetModel()

    def set_sensitivity(self, report: SensitivityReport | None) -> None:
        """Show each layer's metric drop at 50% sparsity (or the nearest level swept)."""
        self._sensitivity.clear()
        self._sensitivity_metric = metric_axis(report.metric if report else None)
        levels = report.sparsity.levels if report else []
        if report is not None and levels:
            column = min(range(len(levels)), key=lambda i: abs(levels[i] - 0.5))
            for name, row in report.sparsity.rows(report.layers).items():
                if row[column] is not None:
                    detail = ", ".join(f"{level:.0%}: {self._drop_text(drop, '+')}"
                                       for level, drop in zip(levels, row, strict=True)
                                       if drop is not None)
                    self._sensitivity[name] = (row[column], detail)
        if self._tree is not None and len(self._tree):
            self._emit_columns(self._tree.nodes, SENSITIVITY_COLUMN, SENSITIVITY_COLUMN)

    def node(self, index: _Index) -> LayerNode | None:
        if not index.isValid() or self._tree is None:
            return None
        return self._tree.nodes[index.internalId()]

    def index_of(self, node_id: int, column: int = 0) -> QModelIndex:
        if self._tree is None:
            return QModelIndex()
        node = self._tree.nodes[node_id]
        return self.createIndex(node.row if node.parent is not None else 0, column, node.id)

    # --- structure -------------------------------------------------------------------------
    def index(self, row: int, column: int, parent: _Index = _TOP) -> QModelIndex:
        if self._tree is None or not 0 <= column < len(COLUMNS) or row < 0:
            return QModelIndex()
        if not parent.isValid():
            return self.createIndex(0, column, 0) if row == 0 else QModelIndex()
        children = self._tree.nodes[parent.internalId()].children
        if row >= len(children):
            return QModelIndex()
        return self.createIndex(row, column, children[row])

    def parent(self, index: _Index | None = None):  # type: ignore[override]
        if index is None:  # QObject.parent()
            return super().parent()
        node = self.node(index)
        if node is None or node.parent is None:
            return QModelIndex()
        return self.index_of(node.parent)

    def rowCount(self, parent: _Index = _TOP) -> int:
        if self._tree is None:
            return 0
        if not parent.isValid():
            return 1
        if parent.column() > 0:
            return 0
        return len(self._tree.nodes[parent.internalId()].children)

    def columnCount(self, parent: _Index = _TOP) -> int:
        return len(COLUMNS)

    def hasChildren(self, parent: _Index = _TOP) -> bool:
        return self.rowCount(parent) > 0

    # --- content ---------------------------------------------------------------------------
    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> object:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(COLUMNS):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section].title
        if role == Qt.ItemDataRole.ToolTipRole:
            return COLUMNS[section].tooltip
        return None

    def _inherited(self, node: LayerNode, column: int) -> bool:
        spec = self._resolved[node.id]
        return all(spec.inherited(field, node.name) for field in COLUMNS[column].plan_fields)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        node = self.node(index)
        if node is None:
            return None
        column = COLUMNS[index.column()]
        spec = self._resolved[node.id]
        if index.column() == SENSITIVITY_COLUMN:
            return self._sensitivity_data(node, role)
        if index.column() == SQNR_COLUMN:
            return self._sqnr_data(node, role)
        if role == Qt.ItemDataRole.DisplayRole:
            if node.parent is None and index.column() == 0:
                return self._tree.model_name if self._tree else ""
            return column.text(node, spec)
        if role == SORT_ROLE:
            return column.sort_key(node, spec)
        if role == FILTER_ROLE:
            return f"{node.name} {node.type_label}"
        if role == NODE_ID_ROLE:
            return node.id
        if role == Qt.ItemDataRole.TextAlignmentRole and column.numeric:
            return _ALIGN_NUMBER
        if index.column() in PLAN_COLUMNS:
            return self._plan_style(node, index.column(), role)
        if role == Qt.ItemDataRole.FontRole and node.parent is None:
            return self._bold
        if role == Qt.ItemDataRole.ToolTipRole and index.column() == 0:
            return node.name or self._tree.model_name if self._tree else None
        return None

    def _drop_text(self, drop: float, sign: str = "") -> str:
        """Fractions (accuracy, top-1 agreement) in points; other metrics as they are."""
        if self._sensitivity_metric.unit == "%":
            return f"{drop * 100:{sign}.2f} pt"
        return f"{drop:{sign}.3g}"

    def _sensitivity_data(self, node: LayerNode, role: int) -> object:
        value = self._sensitivity.get(node.name)
        if role == Qt.ItemDataRole.DisplayRole:
            return "" if value is None else self._drop_text(value[0])
        if role == SORT_ROLE:
            return -1.0 if value is None else value[0]
        if role == Qt.ItemDataRole.BackgroundRole and value is not None:
            worst = max((abs(v) for v, _ in self._sensitivity.values()), default=0.0)
            return health_colour(value[0] / worst if worst > 0 else 0.0)
        if role == Qt.ItemDataRole.ToolTipRole and value is not None:
            label = self._sensitivity_metric.label.lower()
            return f"{label} drop with this layer alone pruned: {value[1]}"
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return _ALIGN_NUMBER
        if role in (FILTER_ROLE, NODE_ID_ROLE):
            return f"{node.name} {node.type_label}" if role == FILTER_ROLE else node.id
        return None

    def set_sqnr(self, values: dict[str, float]) -> None:
        """Show each layer's SQNR (dB) at its planned bits; layers not given show nothing."""
        self._sqnr = dict(values)
        if self._tree is not None:
            self._emit_columns(list(self._tree.nodes), SQNR_COLUMN, SQNR_COLUMN)

    def _sqnr_data(self, node: LayerNode, role: int) -> object:
        value = self._sqnr.get(node.name)
        if role == Qt.ItemDataRole.DisplayRole:
            return "" if value is None else "lossless" if value == float("inf") \
                else f"{value:.1f} dB"
        if role == SORT_ROLE:
            return -1.0 if value is None else min(value, 1e9)
        if role == Qt.ItemDataRole.BackgroundRole and value is not None:
            return health_colour((SQNR_GOOD_DB - value) / (SQNR_GOOD_DB - SQNR_BAD_DB))
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return _ALIGN_NUMBER
        if role in (FILTER_ROLE, NODE_ID_ROLE):
            return f"{node.name} {node.type_label}" if role == FILTER_ROLE else node.id
        return None

    def _plan_style(self, node: LayerNode, column: int, role: int) -> object:
        inherited = self._inherited(node, column)
        if role == INHERITED_ROLE:
            return inherited
        if role == Qt.ItemDataRole.FontRole:
            return self._italic if inherited else self._bold
        if role == Qt.ItemDataRole.ForegroundRole and inherited:
            return _INHERITED_COLOUR
        if role == Qt.ItemDataRole.ToolTipRole:
            if not inherited:
                return "set on this layer"
            spec = self._resolved[node.id]
            origins = {spec.sources[f] for f in COLUMNS[column].plan_fields} - {None}
            if not origins:
                return "default: nothing set here or above"
            model_name = self._tree.model_name if self._tree else ""
            return "inherited from " + ", ".join(sorted(o or model_name for o in origins))
        return None

    # --- plan updates ----------------------------------------------------------------------
    def plan_changed(self, resolved: list[ResolvedSpec], names: list[str]) -> None:
        """Refresh the plan columns of the changed layers and everything below them."""
        self._resolved = resolved
        tree = self._tree
        if tree is None:
            return
        nodes = [node for name in names if name in tree for node in tree.subtree(tree.get(name))]
        self._emit_columns(nodes, PLAN_COLUMNS[0], PLAN_COLUMNS[-1])

    def _emit_columns(self, nodes: list[LayerNode], first: int, last: int) -> None:
        """``dataChanged`` for columns ``first..last`` of ``nodes``, one signal per parent."""
        assert self._tree is not None
        parents = {node.parent for node in nodes}
        if None in parents:
            self.dataChanged.emit(self.index(0, first), self.index(0, last))
            parents.discard(None)
        for parent_id in parents:
            count = len(self._tree.nodes[parent_id].children)
            parent = self.index_of(parent_id)
            self.dataChanged.emit(self.index(0, first, parent),
                                  self.index(count - 1, last, parent))
