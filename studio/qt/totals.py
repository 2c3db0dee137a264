"""Before → after totals of the plan, estimated from the tree (nothing runs)."""

from __future__ import annotations

from html import escape

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QGridLayout, QGroupBox, QLabel, QScrollArea, QWidget

from studio.core.plan.estimate import Estimate
from studio.core.units import format_bytes, format_count

_ROWS = (
    ("Parameters", "params", format_count),
    ("Nonzero params", "nonzero_params", format_count),
    ("Bytes", "nbytes", format_bytes),
    ("MACs", "macs", format_count),
)


def first_sentence(text: str) -> str:
    """The gist of a note (its first sentence); the whole note goes in the tooltip."""
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


class TotalsPanel(QGroupBox):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Estimate: before → after", parent)
        grid = QGridLayout(self)
        self.cells: dict[str, tuple[QLabel, QLabel, QLabel]] = {}
        for column, title in enumerate(("", "Before", "After", "Ratio")):
            header = QLabel(f"<b>{title}</b>")
            header.setAlignment(Qt.AlignmentFlag.AlignRight)
            grid.addWidget(header, 0, column)
        for row, (title, field, _) in enumerate(_ROWS, start=1):
            grid.addWidget(QLabel(title), row, 0)
            cells = (QLabel(), QLabel(), QLabel())
            for column, cell in enumerate(cells, start=1):
                cell.setAlignment(Qt.AlignmentFlag.AlignRight)
                grid.addWidget(cell, row, column)
            self.cells[field] = cells
        note = QLabel("Dense runtimes keep unstructured zeros: they lower nonzero params, not "
                      "bytes or MACs. Measured figures come from a compression run.")
        note.setWordWrap(True)
        note.setStyleSheet("color: gray; font-size: 11px;")
        grid.addWidget(note, len(_ROWS) + 1, 0, 1, 4)
        self.caveats = QLabel()
        """What the plan asks for that will not pay off (the estimate's notes), beside the
        figures so nobody learns it only from the run report."""
        self.caveats.setWordWrap(True)
        self.caveats.setStyleSheet("color: #b35900; font-size: 11px;")
        self.caveats_box = QScrollArea()  # several notes must not push the window taller
        self.caveats_box.setWidget(self.caveats)
        self.caveats_box.setWidgetResizable(True)
        self.caveats_box.setFrameShape(QFrame.Shape.NoFrame)
        self.caveats_box.setMaximumHeight(80)
        self.caveats_box.hide()
        grid.addWidget(self.caveats_box, len(_ROWS) + 2, 0, 1, 4)

    def show_estimate(self, estimate: Estimate | None) -> None:
        notes = estimate.notes if estimate is not None else ()
        self.caveats.setText("Will not pay off:<br>" + "<br>".join(
            f"• {escape(first_sentence(note))}" for note in notes))
        self.caveats.setToolTip("\n\n".join(notes))
        self.caveats_box.setVisible(bool(notes))
        for _title, field, fmt in _ROWS:
            before, after, ratio = self.cells[field]
            if estimate is None:
                before.clear()
                after.clear()
                ratio.clear()
                continue
            before.setText(fmt(getattr(estimate.before, field)))
            after.setText(fmt(getattr(estimate.after, field)))
            ratio.setText(f"{estimate.ratio(field):.2f}×")
