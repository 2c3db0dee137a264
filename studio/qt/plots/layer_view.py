"""The selected layer drawn from its :class:`~studio.core.engine.layer_stats.LayerStats`: weight
histogram before/after the plan, integer grid use, per-channel and activation ranges, the
sparsity pattern, and the sensitivity curve. It only draws; the numbers come from a worker."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSize
from PySide6.QtWidgets import QLabel, QScrollArea, QVBoxLayout, QWidget

from studio.core.engine.layer_stats import LayerStats
from studio.core.units import format_count
from studio.qt.plots.export import style_plot
from studio.qt.plots.heatmap import level_label

PLOTS_MIN_HEIGHT = 420
"""Below this the six plots' axes crowd out their data."""
_BEFORE = (150, 150, 150)
_AFTER = (31, 119, 180)
_ACT = (214, 110, 20)
_CURVES = {"sparsity": (196, 40, 40), "bits": (44, 140, 60)}


def _plot(layout: pg.GraphicsLayoutWidget, row: int, column: int, title: str,
          left: str, bottom: str) -> pg.PlotItem:
    plot = layout.addPlot(row=row, col=column, title=title)
    plot.setLabel("left", left)
    plot.setLabel("bottom", bottom)
    style_plot(plot)
    plot.showGrid(x=True, y=True, alpha=0.15)
    return plot


def _empty(plot: pg.PlotItem, title: str, text: str) -> None:
    """An empty plot that says why, instead of bare axes with meaningless ranges."""
    plot.clear()
    plot.setTitle(title)
    plot.hideAxis("left")
    plot.hideAxis("bottom")
    plot.showGrid(x=False, y=False)
    label = pg.TextItem(text, color=(110, 110, 110), anchor=(0.5, 0.5))
    plot.addItem(label)
    label.setPos(0.5, 0.5)
    plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)


def _filled(plot: pg.PlotItem, title: str) -> None:
    plot.clear()
    plot.setTitle(title)
    plot.showAxis("left")
    plot.showAxis("bottom")
    plot.showGrid(x=True, y=True, alpha=0.15)
    plot.enableAutoRange()


def describe(stats: LayerStats) -> str:
    """The header: what the layer is, what the plan does to it, how long that took."""
    sqnr = ("SQNR: float, not quantized" if stats.sqnr_db is None else
            "SQNR: lossless" if math.isinf(stats.sqnr_db) else
            f"SQNR at {stats.bits}: <b>{stats.sqnr_db:.1f} dB</b>")
    shape = "×".join(str(size) for size in stats.shape)
    sampled = "" if stats.sampled == stats.weights else \
        f", histograms from {format_count(stats.sampled)} sampled"
    activations = f", activations on {stats.act_source}" if stats.act_samples else \
        ", no samples for activations"
    return (f"<b>{stats.name}</b> · {shape} ({format_count(stats.weights)} weights) · "
            f"{stats.sparsity_after:.0%} zero after the plan · {sqnr}"
            f"<br><span style='color: gray'>computed in {stats.seconds:.2f} s{sampled}"
            f"{activations}</span>")


class LayerView(QWidget):
    """Six small plots over one layer, in a scroll area so a short dock scrolls instead of
    squashing them (and never makes the window taller); :meth:`show_stats` replaces them."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.header = QLabel("Select a Conv or Linear layer to see its weights.")
        self.header.setWordWrap(True)
        self.layout_widget = pg.GraphicsLayoutWidget()
        self.layout_widget.setBackground("w")
        self.layout_widget.setMinimumSize(720, PLOTS_MIN_HEIGHT)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.layout_widget)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.header)
        layout.addWidget(scroll, 1)
        grid = self.layout_widget
        self.histogram = _plot(grid, 0, 0, "Weights: before (grey), after (blue)",
                               "count (log)", "weight")
        self.histogram.setLogMode(y=True)
        self.codes = _plot(grid, 0, 1, "Integer grid at the planned bits", "weights",
                           "level")
        self.channels = _plot(grid, 0, 2, "Per-output-channel range", "weight",
                              "output channel")
        self.pattern = _plot(grid, 1, 0, "Kept (dark) weights, top-left corner",
                             "output channel", "input")
        self.pattern.invertY(True)
        self.pattern_image = pg.ImageItem(axisOrder="row-major")
        self.pattern.addItem(self.pattern_image)
        self.activations = _plot(grid, 1, 1, "Activation range per channel", "output",
                                 "channel")
        self.sensitivity = _plot(grid, 1, 2, "Sensitivity (metric drop)", "drop", "level")
        self.sensitivity.addLegend(offset=(-10, 10))
        self._group_lines: list[pg.InfiniteLine] = []
        self.stats: LayerStats | None = None

    def sizeHint(self) -> QSize:
        """Tall enough for the plots without scrolling (the main window grows the dock to it)."""
        margins = self.layout().contentsMargins()
        return QSize(self.layout_widget.minimumWidth(),
                     self.header.sizeHint().height() + PLOTS_MIN_HEIGHT + margins.top()
                     + margins.bottom() + self.layout().spacing() + 4)

    def show_message(self, text: str) -> None:
        """No layer to draw (nothing selected, not a weighted layer, or still computing)."""
        self.header.setText(text)
        if self.stats is not None:
            self.stats = None
            for plot in (self.histogram, self.codes, self.channels, self.activations,
                         self.sensitivity):
                plot.clear()
            self.pattern_image.clear()

    def show_stats(self, stats: LayerStats) -> None:
        self.stats = stats
        self.header.setText(describe(stats))
        self._histogram(stats)
        self._codes(stats)
        self._ranges(self.channels, stats.channel_min, stats.channel_max, _AFTER)
        self._activations(stats)
        self._pattern(stats)
        self._sensitivity(stats)

    def _histogram(self, stats: LayerStats) -> None:
        self.histogram.clear()
        # log axis: empty bins are drawn at 1 so the steps stay continuous
        for counts, colour, fill in ((stats.before, _BEFORE, 60), (stats.after, _AFTER, 0)):
            self.histogram.plot(stats.edges, np.maximum(counts, 1), stepMode="center",
                                pen=pg.mkPen(colour, width=1.5),
                                fillLevel=0 if fill else None,
                                brush=(*colour, fill) if fill else None)

    def _codes(self, stats: LayerStats) -> None:
        if stats.codes is None:
            _empty(self.codes, "Integer grid", "The plan keeps this layer float:\n"
                   "set int8, int4 or int2 bits\nto see the grid it lands on.")
            return
        qmax = (len(stats.codes) - 1) // 2
        _filled(self.codes, f"Integer grid at {stats.bits}: {len(stats.codes)} levels")
        levels = np.arange(-qmax, qmax + 1)
        self.codes.addItem(pg.BarGraphItem(x=levels, height=stats.codes, width=0.8,
                                           brush=pg.mkBrush(*_AFTER)))

    @staticmethod
    def _ranges(plot: pg.PlotItem, low: np.ndarray, high: np.ndarray,
                colour: tuple[int, int, int]) -> None:
        plot.clear()
        x = np.arange(len(low))
        lower = plot.plot(x, low, pen=pg.mkPen(colour, width=1))
        upper = plot.plot(x, high, pen=pg.mkPen(colour, width=1))
        plot.addItem(pg.FillBetweenItem(lower, upper, brush=pg.mkBrush(*colour, 70)))

    def _activations(self, stats: LayerStats) -> None:
        if stats.act_min is None or stats.act_max is None:
            _empty(self.activations, "Activation range", "No samples: set an example input\n"
                   "or the data to see output ranges.")
            return
        _filled(self.activations,
                f"Activation range per channel ({stats.act_samples} samples)")
        self._ranges(self.activations, stats.act_min, stats.act_max, _ACT)

    def _pattern(self, stats: LayerStats) -> None:
        rows, columns = stats.pattern.shape
        for line in self._group_lines:
            self.pattern.removeItem(line)
        self._group_lines = []
        group = f", lines between groups of {stats.group}" if stats.group else ""
        self.pattern.setTitle(f"Kept (dark) weights, first {rows}×{columns}{group}")
        self.pattern_image.setImage(1.0 - stats.pattern.astype(np.float32), levels=(0.0, 1.0))
        if stats.group:
            for x in range(stats.group, columns, stats.group):
                line = pg.InfiniteLine(x, angle=90, pen=pg.mkPen(220, 40, 40, 255, width=1.5))
                self.pattern.addItem(line)
                self._group_lines.append(line)
        self.pattern.setRange(xRange=(0, columns), yRange=(0, rows), padding=0)

    def _sensitivity(self, stats: LayerStats) -> None:
        plot = self.sensitivity
        if not stats.curves:
            _empty(plot, "Sensitivity", "No sweep covers this layer yet:\n"
                   "Compress ▸ Sensitivity Analysis…\nmeasures it.")
            return
        _filled(plot, "Sensitivity (metric drop per level)")
        ticks = []
        for curve in stats.curves:
            offset = len(ticks)
            x = [offset + i for i, d in enumerate(curve.drops) if d is not None]
            y = [d for d in curve.drops if d is not None]
            ticks.extend((offset + i, level_label(level)) for i, level in enumerate(curve.levels))
            plot.plot(x, y, pen=pg.mkPen(_CURVES[curve.sweep], width=2), symbol="o",
                      symbolSize=7, symbolBrush=_CURVES[curve.sweep], name=curve.sweep)
        plot.getAxis("bottom").setTicks([ticks])
