"""The task metric against size, latency or MACs: every experiment a point, the Pareto front a
staircase. The metric is the experiments' own (accuracy, or agreement with the uncompressed model
for unlabelled data); each point's ``value`` key holds its value and ``metric`` its name.

Experiments arrive one at a time as jobs finish (not a stream), so each change redraws at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QPoint, Qt, Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from studio.core.units import format_bytes
from studio.qt.plots.export import export_png, style_plot, write_csv
from studio.qt.plots.front import AXES, Axis, axis_for, pareto_front, step_line
from studio.qt.plots.metric import MetricAxis, common_metric, metric_axis

BASELINE_ID = "baseline"
CSV_HEADER = ("id", "name", "metric", "value", "onnx_bytes", "macs", "latency_ms", "on_front")
MIXED = MetricAxis("mixed", "Metric (experiments use different metrics)", 1.0, "")
COMPARE_MODIFIERS = (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
                     | Qt.KeyboardModifier.MetaModifier)
"""Any of these held while clicking adds the point to the comparison instead of opening it."""

EMPTY_TEXT = ("No experiments yet.\nPlan some compression in the layer tree, then "
              "Compress ▸ Run Plan (Ctrl+R): each run becomes a point here, metric against "
              "size, latency or MACs, with the baseline as a star.")
FRONT_BRUSH = pg.mkBrush(31, 119, 180)
DOMINATED_BRUSH = pg.mkBrush(150, 150, 150, 160)
BASELINE_BRUSH = pg.mkBrush(255, 170, 0)
SELECTED_PEN = pg.mkPen(214, 39, 40, width=3)


def point_summary(point: Mapping[str, object]) -> str:
    """The hover text: what a user needs to tell experiments apart without opening them."""

    def num(key: str, scale: float, fmt: str) -> str:
        value = point.get(key)
        return "—" if value is None else format(float(value) * scale, fmt)  # type: ignore[arg-type]

    value = point.get("value")
    size = point.get("onnx_bytes")
    batch = point.get("latency_batch")
    return "\n".join([
        str(point.get("name") or point.get("id")),
        metric_axis(point.get("metric")).text(None if value is None else float(value)),  # type: ignore[arg-type]
        f"size {'—' if size is None else format_bytes(float(size))}",  # type: ignore[arg-type]
        f"latency {num('latency_ms', 1.0, '.2f')} ms"
        + (f" at batch {batch}" if batch is not None else ""),
        f"MACs {num('macs', 1e-6, '.2f')} M",
    ])


class ParetoPlot(QWidget):
    """Scatter of experiments with the front (minimise x, best metric) and the baseline.

    A plain click emits :attr:`pointClicked` (open that experiment's plan); a click with Ctrl,
    Shift or Meta adds the point to a two-point selection and emits :attr:`compareRequested`
    once two are selected.
    """

    pointClicked = Signal(str)
    compareRequested = Signal(str, str)
    pointMenuRequested = Signal(str, QPoint)
    """(point id, global position): a right-click on a point."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._points: dict[str, dict] = {}
        self._front: list[str] = []
        self._selected: list[str] = []
        self._x_key = next(iter(AXES))
        self._axis: Axis = AXES[self._x_key]
        self._metric = metric_axis(None)

        self.axis_combo = QComboBox()
        for key, axis in AXES.items():
            self.axis_combo.addItem(axis.label, key)
        self.axis_combo.currentIndexChanged.connect(
            lambda _i: self.set_x_axis(self.axis_combo.currentData()))

        self.plot_widget = pg.PlotWidget(background="w")
        self.plot_item = self.plot_widget.getPlotItem()
        self.plot_item.showGrid(x=True, y=True, alpha=0.25)
        self.plot_item.setLabel("left", self._metric.title)
        self.plot_item.setMenuEnabled(False)
        style_plot(self.plot_item)
        self.plot_item.getViewBox().setDefaultPadding(0.12)  # room for the labels at the edges
        self.plot_widget.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.plot_widget.customContextMenuRequested.connect(self._context_menu)
        self._empty = pg.TextItem(EMPTY_TEXT, color=(90, 90, 90), anchor=(0.5, 0.5))
        self._empty.setTextWidth(360)
        self.legend = self.plot_item.addLegend(offset=(-10, -10), labelTextColor="k")

        tip = self._tip
        self._front_line = pg.PlotDataItem(pen=pg.mkPen(31, 119, 180, width=2,
                                                        style=Qt.PenStyle.DashLine),
                                           name="Pareto front")
        self._selection = pg.ScatterPlotItem(size=22, pen=SELECTED_PEN, brush=None,
                                             symbol="o", tip=None)
        self._scatter = pg.ScatterPlotItem(size=11, pen=pg.mkPen("k", width=0.5), brush=FRONT_BRUSH,
                                           hoverable=True, tip=tip, name="experiments",
                                           hoverSize=15)
        self._baseline = pg.ScatterPlotItem(size=22, symbol="star", brush=BASELINE_BRUSH,
                                            pen=pg.mkPen("k", width=1), hoverable=True, tip=tip,
                                            name="baseline")
        self._baseline_label = pg.TextItem("baseline", color="k", anchor=(1.25, 0.5))
        for z, item in enumerate((self._front_line, self._selection, self._scatter,
                                  self._baseline)):
            item.setZValue(z)
            self.plot_item.addItem(item)
        self.plot_item.addItem(self._baseline_label)
        self.plot_item.addItem(self._empty, ignoreBounds=True)
        self._baseline_label.setVisible(False)
        for item in (self._scatter, self._baseline, self._selection):
            item.sigClicked.connect(self._on_scatter_clicked)

        self.status = QLabel()
        bar = QHBoxLayout()
        bar.addWidget(QLabel("x axis:"))
        bar.addWidget(self.axis_combo)
        bar.addStretch(1)
        bar.addWidget(self.status)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(bar)
        layout.addWidget(self.plot_widget, 1)
        self._refresh()

    # --- data ------------------------------------------------------------------------------

    def set_points(self, points: Iterable[Mapping[str, object]]) -> None:
        """Replace every point (a project opened); the selection keeps the ids still present."""
        self._points = {str(p["id"]): dict(p) for p in points}
        self._selected = [pid for pid in self._selected if pid in self._points]
        self._refresh()

    def add_point(self, point: Mapping[str, object]) -> None:
        """Add or update one experiment (as it finishes); the front is recomputed."""
        self._points[str(point["id"])] = dict(point)
        self._refresh()

    def points(self) -> list[dict]:
        return [dict(p) for p in self._points.values()]

    def front_ids(self) -> list[str]:
        """Ids on the Pareto front for the current x axis, by rising x."""
        return list(self._front)

    def selected_ids(self) -> list[str]:
        return list(self._selected)

    def clear_selection(self) -> None:
        self._selected = []
        self._draw_selection()

    @property
    def x_key(self) -> str:
        return self._x_key

    def set_x_axis(self, key: str) -> None:
        """Show ``key`` (one of :data:`AXES`) on x; the front depends on it, so recompute."""
        if key not in AXES:
            raise ValueError(f"unknown x axis {key!r}; choose one of {sorted(AXES)}")
        self._x_key = key
        index = self.axis_combo.findData(key)
        if index != self.axis_combo.currentIndex():
            self.axis_combo.setCurrentIndex(index)  # re-enters once with the same key
            return
        self._refresh()

    # --- drawing ---------------------------------------------------------------------------

    def _usable(self) -> list[dict]:
        return [p for p in self._points.values()
                if p.get(self._x_key) is not None and p.get("value") is not None]

    def _xy(self, point: Mapping[str, object]) -> tuple[float, float]:
        y = float(point["value"]) * self._metric.scale  # type: ignore[arg-type]
        return self._axis.value(point), y

    @property
    def metric(self) -> MetricAxis:
        """The y axis: the metric the experiments share."""
        return self._metric

    def _refresh(self) -> None:
        axis = self._axis = axis_for(self._x_key, list(self._points.values()))
        self.plot_item.setLabel("bottom", axis.label)
        common = common_metric(p.get("metric") for p in self._points.values())  # type: ignore[misc]
        self._metric = metric_axis(common) if common or not self._points else MIXED
        self.plot_item.setLabel("left", self._metric.title)
        usable = self._usable()
        # The front keeps the best metric: the lowest where lower is better (MSE).
        self._front = pareto_front(usable, self._x_key, "value",
                                   self._metric.higher_is_better)
        on_front = set(self._front)

        spots = [{"pos": self._xy(p), "data": pid,
                  "brush": FRONT_BRUSH if pid in on_front else DOMINATED_BRUSH}
                 for p in usable if (pid := str(p["id"])) != BASELINE_ID]
        self._scatter.setData(spots)

        base = self._points.get(BASELINE_ID)
        if base is not None and base in usable:
            bx, by = self._xy(base)
            self._baseline.setData([{"pos": (bx, by), "data": BASELINE_ID}])
            self._baseline_label.setPos(bx, by)
            self._baseline_label.setVisible(True)
        else:
            self._baseline.setData([])
            self._baseline_label.setVisible(False)

        xs, ys = step_line([self._xy(self._points[pid]) for pid in self._front])
        self._front_line.setData(xs, ys)
        self._draw_selection()
        missing = len(self._points) - len(usable)
        runs = sum(1 for p in usable if str(p["id"]) != BASELINE_ID)  # the baseline is no run
        on_front = sum(1 for pid in self._front if pid != BASELINE_ID)
        text = f"{runs} experiment{'s' * (runs != 1)}, {on_front} on the front"
        if not self._points:
            text = "No experiments yet"
        self.status.setText(text + (f" ({missing} without {axis.label})" if missing else ""))
        self._show_empty(not usable)

    def _show_empty(self, empty: bool) -> None:
        """Before any run: say what the plot will show, on quiet axes (not a range of
        nonsense numbers)."""
        self._empty.setVisible(empty)
        self.legend.setVisible(not empty)
        for name in ("left", "bottom"):
            self.plot_item.getAxis(name).setStyle(showValues=not empty)
        if empty:
            self.plot_item.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)
            self._empty.setPos(0.5, 0.5)
        else:
            self.plot_item.enableAutoRange()

    def _draw_selection(self) -> None:
        spots = [{"pos": self._xy(self._points[pid]), "data": pid} for pid in self._selected
                 if pid in self._points and self._points[pid].get(self._x_key) is not None]
        self._selection.setData(spots)

    def _tip(self, x: float, y: float, data: object) -> str:
        point = self._points.get(str(data))
        return point_summary(point) if point else ""

    # --- clicks ----------------------------------------------------------------------------

    def _context_menu(self, position: QPoint) -> None:
        """A right-click on a point asks for its menu (the plot's own menu is off)."""
        scene = self.plot_widget.mapToScene(position)
        view = self.plot_item.getViewBox().mapSceneToView(scene)
        for item in (self._baseline, self._scatter):
            hits = item.pointsAt(view)
            if len(hits):
                self.pointMenuRequested.emit(str(hits[0].data()),
                                             self.plot_widget.mapToGlobal(position))
                return

    def _on_scatter_clicked(self, _item: object, spots: Sequence[object], event: object) -> None:
        modifiers = event.modifiers() if hasattr(event, "modifiers") else Qt.KeyboardModifier(0)
        self._on_points_clicked(spots, modifiers)

    def _on_points_clicked(self, spots: Sequence[object],
                           modifiers: Qt.KeyboardModifier = Qt.KeyboardModifier.NoModifier) -> None:
        """Every click goes through here (spots or plain ids), so tests need no mouse."""
        if not len(spots):
            return
        first = spots[0]
        pid = first if isinstance(first, str) else str(first.data())  # type: ignore[attr-defined]
        if pid not in self._points:
            return
        if modifiers & COMPARE_MODIFIERS:
            if pid in self._selected:
                self._selected.remove(pid)
            else:
                self._selected = [*self._selected, pid][-2:]
            self._draw_selection()
            if len(self._selected) == 2:
                self.compareRequested.emit(self._selected[0], self._selected[1])
            return
        self._selected = [pid]
        self._draw_selection()
        self.pointClicked.emit(pid)

    # --- export ----------------------------------------------------------------------------

    def export_png(self, path: str | Path) -> Path:
        """The plot as shown, without the selection rings (a choice on screen, not data)."""
        self._selection.setVisible(False)
        try:
            return export_png(self.plot_item, self.plot_widget, path)
        finally:
            self._selection.setVisible(True)

    def export_csv(self, path: str | Path) -> Path:
        """One row per experiment; ``on_front`` is for the x axis shown now."""
        on_front = set(self._front)
        rows = [[p.get("id"), p.get("name"), p.get("metric") or "accuracy", p.get("value"),
                 p.get("onnx_bytes"),
                 p.get("macs"), p.get("latency_ms"), int(str(p["id"]) in on_front)]
                for p in self._points.values()]
        return write_csv(path, CSV_HEADER, rows)
