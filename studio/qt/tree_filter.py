"""Filtering and sorting of the layer tree, done by Qt's C++ proxy on roles the model serves."""

from __future__ import annotations

from PySide6.QtCore import QSortFilterProxyModel, Qt

from studio.qt.tree_model import FILTER_ROLE, SORT_ROLE


class LayerFilterProxy(QSortFilterProxyModel):
    """Shows layers whose name or type contains the filter text, with their ancestors (for
    context) and their descendants (a matching block shows its layers)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setRecursiveFilteringEnabled(True)
        self.setAutoAcceptChildRows(True)
        self.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.setFilterRole(FILTER_ROLE)
        self.setFilterKeyColumn(0)
        self.setSortRole(SORT_ROLE)

    def set_filter_text(self, text: str) -> None:
        self.setFilterFixedString(text.strip())
