"""Live training curves: samples are only buffered as they arrive; a timer redraws at ~15 Hz.

A job can report many metrics a second; one ``setData`` per sample would starve the event
loop (DESIGN: "Plots redraw on a timer ... never once per training step").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QVBoxLayout, QWidget

from studio.qt.plots.export import export_png, style_plot, write_csv

REDRAW_MS = 66
"""About 15 redraws a second: smooth to the eye, cheap for the event loop."""

Key = tuple[str, str]
EMPTY_TEXT = ("Training curves appear here while a run fine-tunes or distils (Run settings ▸ "
              "train epochs above 0): the loss above, each epoch's validation metric below.")
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
"""Matplotlib's tab10: distinct hues that stay readable on white."""


def is_loss(name: str) -> bool:
    """Losses go in the upper plot and metrics in the lower one: their scales differ."""
    return "loss" in name.lower()


class _Series:
    """Growable numpy buffer of (step, value) for one stage/name, amortised O(1) appends."""

    def __init__(self) -> None:
        self.data = np.empty((64, 2), dtype=float)
        self.size = 0

    def append(self, step: float, value: float) -> None:
        if self.size == len(self.data):
            self.data = np.concatenate([self.data, np.empty_like(self.data)])
        self.data[self.size] = (step, value)
        self.size += 1

    def view(self) -> np.ndarray:
        return self.data[: self.size]


class CurvesPlot(QWidget):
    """Loss by step (top) and validation metrics by epoch (bottom), one line per (stage, name).

    :meth:`append` may be called thousands of times a second from a signal carrying plain
    numbers; it never touches a plot item. :attr:`redraws` counts timer redraws, so a test
    can prove the batching.
    """

    def __init__(self, parent: QWidget | None = None, redraw_ms: int = REDRAW_MS) -> None:
        super().__init__(parent)
        self._series: dict[Key, _Series] = {}
        self._curves: dict[Key, pg.PlotDataItem] = {}
        self._dirty: set[Key] = set()
        self.redraws = 0

        self.layout_widget = pg.GraphicsLayoutWidget()
        self.layout_widget.setBackground("w")
        self.loss_plot = self.layout_widget.addPlot(row=0, col=0)
        self.metric_plot = self.layout_widget.addPlot(row=1, col=0)
        # Not x-linked: losses come per training step, metrics per epoch (0 = before training).
        self._legends: dict[pg.PlotItem, pg.LegendItem] = {}
        for row, (plot, label) in enumerate(((self.loss_plot, "Loss"),
                                             (self.metric_plot, "Metric"))):
            style_plot(plot)
            plot.showGrid(x=True, y=True, alpha=0.25)
            plot.setLabel("left", label)
            plot.setMenuEnabled(False)
            # beside the plot, not over it: a legend never hides the lines
            legend = self._legends[plot] = pg.LegendItem(labelTextColor="k")
            self.layout_widget.addItem(legend, row=row, col=1)
        self.layout_widget.ci.layout.setColumnStretchFactor(0, 4)
        self.layout_widget.setMinimumHeight(240)
        self.loss_plot.setLabel("bottom", "Step")
        self.metric_plot.setLabel("bottom", "Epoch")
        self._empty = pg.TextItem(EMPTY_TEXT, color=(90, 90, 90), anchor=(0.5, 0.5))
        self._empty.setTextWidth(480)
        self.loss_plot.addItem(self._empty, ignoreBounds=True)
        self._show_empty(True)

        self._timer = QTimer(self)
        self._timer.setInterval(redraw_ms)
        self._timer.timeout.connect(self._redraw)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.layout_widget)

    def append(self, stage: str, name: str, step: float, value: float) -> None:
        """Buffer one sample; the next timer tick draws it. Cheap enough to call per batch."""
        key = (str(stage), str(name))
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        series.append(float(step), float(value))
        self._dirty.add(key)
        if not self._timer.isActive():
            self._timer.start()

    def clear(self) -> None:
        """Forget every line (a new job starts)."""
        self._timer.stop()
        for key, curve in self._curves.items():
            plot = self.loss_plot if is_loss(key[1]) else self.metric_plot
            plot.removeItem(curve)
            self._legends[plot].removeItem(curve)
        self._series.clear()
        self._curves.clear()
        self._dirty.clear()
        self._show_empty(True)

    def _show_empty(self, empty: bool) -> None:
        """Before any sample: a sentence instead of two grids of made-up numbers."""
        self._empty.setVisible(empty)
        for plot in (self.loss_plot, self.metric_plot):
            for name in ("left", "bottom"):
                plot.getAxis(name).setStyle(showValues=not empty)
            if empty:
                plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)
            else:
                plot.enableAutoRange()
        self._empty.setPos(0.5, 0.5)

    def keys(self) -> list[Key]:
        return list(self._series)

    def last_epoch(self) -> float:
        """The latest epoch a metric was buffered at (0 before any)."""
        return max((float(series.view()[:, 0].max()) for (_stage, name), series in
                    self._series.items() if not is_loss(name) and series.size), default=0.0)

    def line_data(self, stage: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """What the line for (stage, name) shows now (after the last redraw)."""
        curve = self._curves.get((stage, name))
        if curve is None:
            return np.empty(0), np.empty(0)
        x, y = curve.getData()
        return (np.empty(0), np.empty(0)) if x is None else (x, y)

    def flush(self) -> None:
        """Draw what is buffered now (before an export, or at the end of a job)."""
        self._redraw()

    def _redraw(self) -> None:
        if not self._dirty:
            self._timer.stop()  # idle: no ticks until the next append
            return
        if not self._curves:
            self._show_empty(False)
        for key in self._dirty:
            data = self._series[key].view()
            curve = self._curves.get(key)
            if curve is None:
                curve = self._new_curve(key)
            curve.setData(data[:, 0].copy(), data[:, 1].copy())
        self._dirty.clear()
        self.redraws += 1

    def _new_curve(self, key: Key) -> pg.PlotDataItem:
        stage, name = key
        plot = self.loss_plot if is_loss(name) else self.metric_plot
        color = PALETTE[len(self._curves) % len(PALETTE)]
        # Metrics come once an epoch (or once a run): markers keep a single point visible.
        markers = {} if is_loss(name) else {"symbol": "o", "symbolSize": 7,
                                            "symbolBrush": color, "symbolPen": color}
        curve = plot.plot(pen=pg.mkPen(color, width=2), **markers)
        self._legends[plot].addItem(curve, f"{stage} · {name}")
        # Long runs: draw what fits on screen, not every sample.
        curve.setDownsampling(auto=True, method="peak")
        curve.setClipToView(True)
        self._curves[key] = curve
        return curve

    def export_png(self, path: str | Path) -> Path:
        self.flush()
        return export_png(self.layout_widget.ci, self.layout_widget, path)

    def export_csv(self, path: str | Path) -> Path:
        """Every buffered sample, long format: stage, name, step, value."""
        rows = [(stage, name, step, value)
                for (stage, name), series in self._series.items()
                for step, value in series.view().tolist()]
        return write_csv(path, ("stage", "name", "step", "value"), rows)
