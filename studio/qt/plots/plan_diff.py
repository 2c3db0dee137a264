"""How two experiments' plans differ, layer by layer: a pure function and a small table."""

from __future__ import annotations

from collections.abc import Mapping

from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

DEFAULTS_ROW = "(defaults)"
"""The layer name shown for the plan's model-wide defaults."""

DiffRow = tuple[str, str, object, object]


def plan_diff(plan_a: Mapping[str, object], plan_b: Mapping[str, object]) -> list[DiffRow]:
    """Rows ``(layer, field, value_a, value_b)`` where the two plans' entries differ.

    Entries are compared as written (``None`` = not set, so inherited): resolving inheritance
    needs the layer tree, and "set here vs inherited" is itself what a user comparing two
    recipes wants to see. Defaults come first as :data:`DEFAULTS_ROW`, then layers by name.
    """
    rows: list[DiffRow] = []
    sections: list[tuple[str, Mapping[str, object], Mapping[str, object]]] = [
        (DEFAULTS_ROW, _mapping(plan_a.get("defaults")), _mapping(plan_b.get("defaults")))
    ]
    layers_a, layers_b = _mapping(plan_a.get("layers")), _mapping(plan_b.get("layers"))
    for name in sorted(set(layers_a) | set(layers_b)):
        sections.append((name, _mapping(layers_a.get(name)), _mapping(layers_b.get(name))))
    for layer, a, b in sections:
        for field in sorted(set(a) | set(b)):
            va, vb = a.get(field), b.get(field)
            if va != vb:
                rows.append((layer, field, va, vb))
    return rows


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str:
    return "—" if value is None else str(value)


class PlanDiffView(QTableWidget):
    """Read-only table of :func:`plan_diff` rows, headed by the two experiments' names."""

    def __init__(self, parent: object | None = None) -> None:
        super().__init__(0, 4, parent)  # type: ignore[arg-type]
        self.setHorizontalHeaderLabels(["Layer", "Field", "A", "B"])
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.verticalHeader().setVisible(False)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        for column in (2, 3):  # the two values share the room, side by side
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Stretch)
        self.setAlternatingRowColors(True)

    def set_plans(self, plan_a: Mapping[str, object], plan_b: Mapping[str, object],
                  name_a: str = "A", name_b: str = "B") -> list[DiffRow]:
        """Show how ``plan_a`` and ``plan_b`` differ; returns the rows shown."""
        rows = plan_diff(plan_a, plan_b)
        self.set_rows(rows, name_a, name_b)
        return rows

    def set_rows(self, rows: list[DiffRow], name_a: str = "A", name_b: str = "B") -> None:
        self.setHorizontalHeaderLabels(["Layer", "Field", name_a, name_b])
        self.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                self.setItem(r, c, QTableWidgetItem(_text(value)))
        if not rows:
            self.setRowCount(1)
            self.setItem(0, 0, QTableWidgetItem("The two plans are the same."))
            self.setSpan(0, 0, 1, 4)
        else:
            self.clearSpans()
