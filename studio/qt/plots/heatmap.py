"""Sensitivity as a heatmap (layer × level → metric drop) beside the hovered layer's curve.

Rows are layers (names can be long and many, so they read down the left axis), columns the
sweep's levels. The colours diverge at zero: red is worse than the baseline, blue better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from studio.core.reports.sensitivity_report import SensitivityReport
from studio.qt.plots.export import export_png, style_plot, write_csv
from studio.qt.plots.metric import metric_axis

SWEEPS = {"sparsity": "Sparsity sweep", "bits": "Bit-width sweep"}
MAX_CELL_LABELS = 400
"""Above this many cells the numbers would not fit in the cells; the tooltip still has them."""

DIVERGING = pg.ColorMap([0.0, 0.5, 1.0], [(49, 104, 176), (247, 247, 247), (196, 40, 40)])


EMPTY_TEXT = ("No sensitivity sweep yet. Compress ▸ Sensitivity Analysis measures how much the "
              "metric drops when each layer alone is pruned or quantized; the result shows "
              "here as a layer × level map, fills the tree's Sensitivity column and lets "
              "Compress ▸ Allocate to Target propose a plan.")


def level_label(level: object) -> str:
    """0.25 → "25%", "int4" → "int4": how a user names a level."""
    if isinstance(level, float | int) and not isinstance(level, bool):
        return f"{float(level) * 100:g}%"
    return str(level)


class SensitivityHeatmap(QWidget):
    """Shows one sweep of a sensitivity report; a combo switches sparsity ↔ bits.

    Hovering a cell shows the exact drop and plots that layer's drop against the levels on
    the right; a click pins that layer (and emits :attr:`layerSelected`).
    """

    layerSelected = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._report: SensitivityReport | None = None
        self._sweep = "sparsity"
        self._matrix = np.zeros((0, 0))
        self._layers: list[str] = []
        self._levels: list[object] = []
        self._scale, self._unit = 1.0, ""
        self._pinned: int | None = None
        self._cell_labels: list[pg.TextItem] = []

        self.sweep_combo = QComboBox()
        self.sweep_combo.currentIndexChanged.connect(
            lambda _i: self.set_sweep(self.sweep_combo.currentData()))
        self.info = QLabel()

        self.plot_widget = pg.PlotWidget(background="w")
        self.plot_item = self.plot_widget.getPlotItem()
        style_plot(self.plot_item)
        self.plot_item.setMenuEnabled(False)
        self.plot_item.getViewBox().setDefaultPadding(0.0)
        self.plot_item.invertY(True)  # first layer at the top, as in the tree
        self.plot_item.setMouseEnabled(x=False, y=True)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot_item.addItem(self.image)
        self.color_bar = pg.ColorBarItem(values=(-1, 1), colorMap=DIVERGING, interactive=False,
                                         rounding=1e-6, width=15, pen="k")
        self.color_bar.setImageItem(self.image, insert_in=self.plot_item)
        self.color_bar.axis.setTextPen(pg.mkPen(30, 30, 30))
        self.plot_widget.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self.plot_widget.scene().sigMouseClicked.connect(self._on_mouse_clicked)

        self.curve_widget = pg.PlotWidget(background="w")
        self.curve_plot = self.curve_widget.getPlotItem()
        style_plot(self.curve_plot)
        self.curve_plot.setMenuEnabled(False)
        self.curve_plot.showGrid(x=True, y=True, alpha=0.25)
        self.curve_plot.addItem(pg.InfiniteLine(0, angle=0, pen=pg.mkPen(150, 150, 150)))
        self.layer_curve = self.curve_plot.plot(pen=pg.mkPen("#c42828", width=2), symbol="o",
                                                symbolBrush="#c42828", symbolSize=7)

        bar = QHBoxLayout()
        bar.addWidget(QLabel("Sweep:"))
        bar.addWidget(self.sweep_combo)
        bar.addStretch(1)
        bar.addWidget(self.info)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.plot_widget)
        splitter.addWidget(self.curve_widget)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 1)
        self.empty = QLabel(EMPTY_TEXT)
        self.empty.setWordWrap(True)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setStyleSheet("color: #555; padding: 24px;")
        self.pages = QStackedWidget()  # a sentence until a sweep exists, not empty axes
        self.pages.addWidget(self.empty)
        self.pages.addWidget(splitter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(bar)
        layout.addWidget(self.pages, 1)

    # --- data ------------------------------------------------------------------------------

    def set_report(self, report: SensitivityReport) -> None:
        """Show ``report``; keeps the sweep choice if that sweep has levels."""
        self._report = report
        self.pages.setCurrentIndex(1)
        sweeps = [key for key in SWEEPS if report.sweep(key).levels] or list(SWEEPS)
        metric = metric_axis(report.metric)
        # Accuracy and top-1 agreement are fractions; a drop reads best in percentage points.
        self._scale, self._unit = (100.0, " pp") if metric.unit == "%" else (1.0, "")
        drop = f"{metric.label} drop{self._unit and ' (pp)'}"
        self.color_bar.setLabel("left", drop, color="#222")
        self.curve_plot.setLabel("left", drop, color="#222")
        self.sweep_combo.blockSignals(True)
        self.sweep_combo.clear()
        for key in sweeps:
            self.sweep_combo.addItem(SWEEPS[key], key)
        self.sweep_combo.blockSignals(False)
        sweep = self._sweep if self._sweep in sweeps else sweeps[0]
        self.set_sweep(sweep)

    def set_sweep(self, sweep: str) -> None:
        """Show the ``"sparsity"`` or ``"bits"`` sweep of the current report."""
        if sweep not in SWEEPS:
            raise ValueError(f"unknown sweep {sweep!r}; choose one of {sorted(SWEEPS)}")
        self._sweep = sweep
        index = self.sweep_combo.findData(sweep)
        if index >= 0 and index != self.sweep_combo.currentIndex():
            self.sweep_combo.setCurrentIndex(index)  # re-enters with the same sweep
            return
        if self._report is None:
            return
        table = self._report.sweep(sweep)
        self._layers, self._levels = list(self._report.layers), list(table.levels)
        # A cell that could not be made (None) shows as a dash: NaN.
        self._matrix = np.asarray(table.drop, dtype=float).reshape(len(self._layers),
                                                                    len(self._levels))
        self._pinned = None
        self._draw()

    def values(self) -> np.ndarray:
        """The (layers × levels) drops shown now, in the report's units."""
        return self._matrix.copy()

    def layers(self) -> list[str]:
        return list(self._layers)

    def levels(self) -> list[object]:
        return list(self._levels)

    @property
    def sweep(self) -> str:
        return self._sweep

    def cell_tip(self, row: int, col: int) -> str:
        """The hover text for one cell: layer, level and the exact drop."""
        drop = self._matrix[row, col] * self._scale
        sign = "worse" if drop > 0 else "better" if drop < 0 else "no change"
        return (f"{self._layers[row]}\n{level_label(self._levels[col])}: "
                f"drop {drop:.3g}{self._unit} ({sign})")

    # --- drawing ---------------------------------------------------------------------------

    def _draw(self) -> None:
        rows, cols = self._matrix.shape
        shown = self._matrix * self._scale
        finite = shown[np.isfinite(shown)]
        bound = float(np.max(np.abs(finite))) if finite.size else 0.0
        bound = bound if bound > 0 else 1.0
        for label in self._cell_labels:
            self.plot_item.removeItem(label)
        self._cell_labels = []
        if rows and cols:
            self.image.setImage(shown, levels=(-bound, bound), autoLevels=False)
            self.image.setRect(0, 0, cols, rows)
            self.image.setVisible(True)
        else:
            self.image.setVisible(False)
        self.color_bar.setLevels((-bound, bound))
        left = self.plot_item.getAxis("left")
        left.setTicks([[(r + 0.5, name) for r, name in enumerate(self._layers)], []])
        # Size the axis for the longest name now: pyqtgraph only widens it when it is drawn, and
        # a report that arrives while the tab is hidden would otherwise show no names at all.
        longest = max((len(name) for name in self._layers), default=0)
        left.setWidth(12 + longest * self.fontMetrics().averageCharWidth())
        self.plot_item.getAxis("bottom").setTicks(
            [[(c + 0.5, level_label(level)) for c, level in enumerate(self._levels)], []])
        self.curve_plot.getAxis("bottom").setTicks(
            [[(c, level_label(level)) for c, level in enumerate(self._levels)], []])
        self.plot_item.setLabel("bottom", "sparsity" if self._sweep == "sparsity" else "bits")
        if rows and cols and rows * cols <= MAX_CELL_LABELS:
            for r in range(rows):
                for c in range(cols):
                    value = shown[r, c]
                    dark = abs(value) / bound > 0.6
                    label = pg.TextItem(f"{value:.2g}" if math.isfinite(value) else "—",
                                        color="w" if dark else "k", anchor=(0.5, 0.5))
                    label.setPos(c + 0.5, r + 0.5)
                    self.plot_item.addItem(label)
                    self._cell_labels.append(label)
        self.plot_item.setXRange(0, max(cols, 1), padding=0)
        self.plot_item.setYRange(0, max(rows, 1), padding=0)
        self.info.setText(f"{rows} layers × {cols} levels" if rows else "No sensitivity yet")
        self.show_layer(0 if rows else None)

    def show_layer(self, row: int | None) -> None:
        """Plot one layer's drop against the levels (``None`` clears the curve)."""
        if row is None or not 0 <= row < len(self._layers):
            self.layer_curve.setData([], [])
            self.curve_plot.setTitle("")
            return
        self.layer_curve.setData(np.arange(len(self._levels), dtype=float),
                                 self._matrix[row] * self._scale)
        self.curve_plot.setTitle(self._layers[row], color="k", size="10pt")

    def select_layer(self, name: str) -> None:
        """Pin ``name``'s curve (hovering other rows no longer replaces it)."""
        row = self._layers.index(name)
        self._pinned = row
        self.show_layer(row)
        self.layerSelected.emit(name)

    def _cell_at(self, scene_pos: QPointF) -> tuple[int, int] | None:
        if not self.plot_item.sceneBoundingRect().contains(scene_pos):
            return None
        point = self.plot_item.getViewBox().mapSceneToView(scene_pos)
        row, col = math.floor(point.y()), math.floor(point.x())
        rows, cols = self._matrix.shape
        return (row, col) if 0 <= row < rows and 0 <= col < cols else None

    def _on_mouse_moved(self, scene_pos: QPointF) -> None:
        cell = self._cell_at(scene_pos)
        self.plot_widget.setToolTip(self.cell_tip(*cell) if cell else "")
        if cell and self._pinned is None:
            self.show_layer(cell[0])

    def _on_mouse_clicked(self, event: object) -> None:
        cell = self._cell_at(event.scenePos())  # type: ignore[attr-defined]
        if cell:
            self.select_layer(self._layers[cell[0]])

    # --- export ----------------------------------------------------------------------------

    def export_png(self, path: str | Path) -> Path:
        return export_png(self.plot_item, self.plot_widget, path)

    def export_csv(self, path: str | Path) -> Path:
        """The shown sweep: a ``layer`` column, then one column per level (report units)."""
        rows: Sequence[Sequence[object]] = [
            [name, *(float(v) for v in self._matrix[r])] for r, name in enumerate(self._layers)]
        return write_csv(path, ["layer", *(str(level) for level in self._levels)], rows)
