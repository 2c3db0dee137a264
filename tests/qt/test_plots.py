"""The studio's plots, driven offscreen with hand-made numbers: fronts, clicks, batching, export."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from studio.core.reports.sensitivity_report import SensitivityReport
from studio.qt.plots import (
    CurvesPlot,
    ParetoPlot,
    PlanDiffView,
    SensitivityHeatmap,
    pareto_front,
    plan_diff,
)

CTRL = Qt.KeyboardModifier.ControlModifier

# c and d are dominated on every axis; a, b and the baseline trade size/latency/MACs for accuracy.
POINTS = [
    {"id": "baseline", "name": "Baseline", "value": 0.976, "onnx_bytes": 547_000,
     "macs": 2_300_000, "latency_ms": 10.5, "plan": {}},
    {"id": "a", "name": "int8", "value": 0.975, "onnx_bytes": 147_000, "macs": 2_300_000,
     "latency_ms": 4.1, "plan": {}},
    {"id": "b", "name": "50% channels", "value": 0.950, "onnx_bytes": 100_000,
     "macs": 1_100_000, "latency_ms": 3.0, "plan": {}},
    {"id": "c", "name": "dominated 1", "value": 0.940, "onnx_bytes": 300_000,
     "macs": 2_300_000, "latency_ms": 9.0, "plan": {}},
    {"id": "d", "name": "dominated 2", "value": 0.960, "onnx_bytes": 560_000,
     "macs": 2_400_000, "latency_ms": 11.0, "plan": {}},
]

REPORT = {
    "kind": "sensitivity", "metric": "accuracy", "baseline": 0.976,
    "layers": ["features.0", "features.3", "classifier.fc1", "classifier.fc2"],
    "sparsity": {"levels": [0.25, 0.5, 0.75],
                 "drop": [[0.001, 0.01, 0.08], [0.0, 0.004, 0.03], [-0.002, 0.002, 0.015],
                          [0.003, 0.02, 0.12]]},
    "bits": {"levels": ["int8", "int4", "int2"],
             "drop": [[0.0, 0.01, 0.3], [0.0, 0.005, 0.2], [0.001, 0.004, 0.15],
                      [0.0, 0.03, 0.5]]},
}


class _Spot:
    """Stands in for pyqtgraph's SpotItem: the click path only asks for its data."""

    def __init__(self, pid: str) -> None:
        self.pid = pid

    def data(self) -> str:
        return self.pid


@pytest.fixture
def pareto(qtbot) -> ParetoPlot:
    plot = ParetoPlot()
    qtbot.addWidget(plot)
    plot.resize(800, 500)
    plot.show()
    plot.set_points(POINTS[:1])
    for point in POINTS[1:]:
        plot.add_point(point)
    return plot


@pytest.mark.parametrize("x_key", ["onnx_bytes", "latency_ms", "macs"])
def test_front_holds_exactly_the_non_dominated(x_key: str) -> None:
    front = set(pareto_front(POINTS, x_key))
    assert front == {"baseline", "a", "b"} - ({"a"} if x_key == "macs" else set())
    # on MACs, a costs what the baseline costs but is less accurate, so the baseline dominates it


def test_pareto_plot_recomputes_the_front_per_axis(pareto: ParetoPlot) -> None:
    assert pareto.front_ids() == ["b", "a", "baseline"]
    pareto.axis_combo.setCurrentIndex(pareto.axis_combo.findData("macs"))
    assert pareto.x_key == "macs"
    assert pareto.front_ids() == ["b", "baseline"]
    assert "MACs" in pareto.plot_item.getAxis("bottom").labelText
    pareto.set_x_axis("latency_ms")
    assert pareto.front_ids() == ["b", "a", "baseline"]
    # the front line is drawn as a staircase through the front points
    xs, ys = pareto._front_line.getData()
    assert len(xs) == 2 * 3 - 1 and ys[-1] == pytest.approx(97.6)


def test_adding_a_better_point_moves_the_front(pareto: ParetoPlot) -> None:
    pareto.add_point({"id": "e", "name": "best", "value": 0.99, "onnx_bytes": 90_000,
                      "macs": 900_000, "latency_ms": 2.0, "plan": {}})
    assert pareto.front_ids() == ["e"]


def test_click_opens_and_modified_clicks_compare(qtbot, pareto: ParetoPlot) -> None:
    with qtbot.waitSignal(pareto.pointClicked) as clicked:
        pareto._on_points_clicked([_Spot("a")], Qt.KeyboardModifier.NoModifier)
    assert clicked.args == ["a"]
    assert pareto.selected_ids() == ["a"]
    with qtbot.waitSignal(pareto.compareRequested) as compared:
        pareto._on_points_clicked([_Spot("c")], CTRL)
    assert compared.args == ["a", "c"]
    assert pareto.selected_ids() == ["a", "c"]


def test_the_real_scatter_spots_carry_their_ids(qtbot, pareto: ParetoPlot) -> None:
    class Event:
        def modifiers(self) -> Qt.KeyboardModifier:
            return Qt.KeyboardModifier.NoModifier

    spot = next(s for s in pareto._scatter.points() if s.data() == "b")
    with qtbot.waitSignal(pareto.pointClicked) as clicked:
        pareto._scatter.sigClicked.emit(pareto._scatter, [spot], Event())
    assert clicked.args == ["b"]
    star = pareto._baseline.points()[0]
    assert star.data() == "baseline"
    assert "Baseline" in pareto._tip(0, 0, "baseline")
    assert "KiB" in pareto._tip(0, 0, "a") and "ms" in pareto._tip(0, 0, "a")


def test_pareto_units_batch_and_count(pareto: ParetoPlot) -> None:
    """Sizes in KiB like the tree (MiB past one), the latency's batch on the axis, and the
    baseline is not counted as an experiment."""
    bottom = pareto.plot_item.getAxis("bottom")
    assert bottom.labelText == "Size (KiB)"
    assert pareto.status.text() == "4 experiments, 2 on the front"
    pareto.set_points([{**p, "latency_batch": 64} for p in POINTS])
    pareto.set_x_axis("latency_ms")
    assert bottom.labelText == "Latency, batch 64 (ms)"
    pareto.set_x_axis("onnx_bytes")
    pareto.add_point({"id": "big", "name": "big", "value": 0.9, "onnx_bytes": 3 * 2**20})
    assert bottom.labelText == "Size (MiB)"
    xs = [spot.pos().x() for spot in pareto._scatter.points() if spot.data() == "big"]
    assert xs == [3.0]


def test_a_right_click_on_a_point_asks_for_its_menu(qtbot, pareto: ParetoPlot) -> None:
    pareto.resize(600, 400)
    pareto.show()
    qtbot.waitExposed(pareto)
    spot = next(s for s in pareto._scatter.points() if s.data() == "b")
    scene = pareto.plot_item.getViewBox().mapViewToScene(spot.pos())
    position = pareto.plot_widget.mapFromScene(scene)
    with qtbot.waitSignal(pareto.pointMenuRequested) as asked:
        pareto.plot_widget.customContextMenuRequested.emit(position)
    assert asked.args[0] == "b"


def test_pareto_exports(tmp_path: Path, pareto: ParetoPlot) -> None:
    png = pareto.export_png(tmp_path / "pareto.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    with pareto.export_csv(tmp_path / "pareto.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == [p["id"] for p in POINTS]
    assert {r["id"]: r["on_front"] for r in rows} == {
        "baseline": "1", "a": "1", "b": "1", "c": "0", "d": "0"}
    assert rows[1]["metric"] == "accuracy" and float(rows[1]["value"]) == 0.975
    assert int(rows[1]["onnx_bytes"]) == 147_000


def test_plan_diff_lists_exactly_the_differing_pairs(qtbot) -> None:
    plan_a = {"defaults": {"sparsity": 0.5, "granularity": "channel"},
              "layers": {"features.0": {"exclude": True},
                         "features.3": {"sparsity": 0.7, "weight_bits": "int8"},
                         "classifier.fc2": {"weight_bits": "int8"}}}
    plan_b = {"defaults": {"sparsity": 0.5, "granularity": "unstructured"},
              "layers": {"features.0": {"exclude": True},
                         "features.3": {"sparsity": 0.6, "weight_bits": "int8"},
                         "classifier.fc1": {"weight_bits": "int4"}}}
    rows = plan_diff(plan_a, plan_b)
    assert rows == [
        ("(defaults)", "granularity", "channel", "unstructured"),
        ("classifier.fc1", "weight_bits", None, "int4"),
        ("classifier.fc2", "weight_bits", "int8", None),
        ("features.3", "sparsity", 0.7, 0.6),
    ]
    assert plan_diff(plan_a, plan_a) == []
    view = PlanDiffView()
    qtbot.addWidget(view)
    view.set_plans(plan_a, plan_b, "run 1", "run 2")
    assert view.rowCount() == 4
    assert view.item(3, 2).text() == "0.7" and view.item(1, 2).text() == "—"
    assert view.horizontalHeaderItem(2).text() == "run 1"


def test_curves_redraw_on_a_timer_not_per_sample(qtbot) -> None:
    plot = CurvesPlot()
    qtbot.addWidget(plot)
    plot.show()
    for step in range(2000):
        plot.append("recover", "loss", step, 1.0 / (step + 1))
    assert plot.redraws == 0  # appending only buffers
    qtbot.waitUntil(lambda: plot.redraws > 0, timeout=120_000)
    assert plot.redraws == 1  # one tick drew all 2,000; idle ticks draw nothing
    x, y = plot.line_data("recover", "loss")
    assert len(x) == len(y) == 2000
    assert y[-1] == pytest.approx(1 / 2000)


def test_curves_split_loss_from_metrics_and_export(qtbot, tmp_path: Path) -> None:
    plot = CurvesPlot()
    qtbot.addWidget(plot)
    plot.append("recover", "loss", 0, 2.0)
    plot.append("recover", "accuracy", 0, 0.9)
    plot.append("qat", "loss", 1, 1.0)
    plot.flush()
    assert plot.keys() == [("recover", "loss"), ("recover", "accuracy"), ("qat", "loss")]
    assert len(plot.loss_plot.listDataItems()) == 2 and len(plot.metric_plot.listDataItems()) == 1
    with plot.export_csv(tmp_path / "curves.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["stage", "name", "step", "value"] and len(rows) == 4
    assert plot.export_png(tmp_path / "curves.png").stat().st_size > 0
    plot.clear()
    assert plot.keys() == [] and plot.metric_plot.listDataItems() == []


def test_heatmap_shows_each_sweep(qtbot, tmp_path: Path) -> None:
    heat = SensitivityHeatmap()
    qtbot.addWidget(heat)
    heat.set_report(SensitivityReport.from_json(REPORT))
    assert heat.values().shape == (4, 3)
    np.testing.assert_allclose(heat.values(), REPORT["sparsity"]["drop"])
    assert "classifier.fc2" in heat.cell_tip(3, 2) and "12 pp" in heat.cell_tip(3, 2)
    heat.sweep_combo.setCurrentIndex(heat.sweep_combo.findData("bits"))
    assert heat.sweep == "bits"
    np.testing.assert_allclose(heat.values(), REPORT["bits"]["drop"])
    heat.select_layer("features.3")
    _, ys = heat.layer_curve.getData()
    np.testing.assert_allclose(ys, np.array(REPORT["bits"]["drop"][1]) * 100)

    with heat.export_csv(tmp_path / "heat.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["layer", "int8", "int4", "int2"]
    assert [r[0] for r in rows[1:]] == REPORT["layers"]
    np.testing.assert_allclose([[float(v) for v in r[1:]] for r in rows[1:]], heat.values())
    assert heat.export_png(tmp_path / "heat.png").stat().st_size > 0


def test_screenshots(qtbot, pareto: ParetoPlot) -> None:
    """Writes /tmp/plot-*.png to look at; they only need to exist here."""
    curves = CurvesPlot()
    heat = SensitivityHeatmap()
    diff = PlanDiffView()
    for widget in (curves, heat, diff):
        qtbot.addWidget(widget)
        widget.resize(800, 450)
        widget.show()
    for step in range(300):
        curves.append("recover", "loss", step, 2.0 / (1 + step / 30))
        curves.append("recover", "accuracy", step, 0.9 + 0.07 * step / 300)
    heat.set_report(SensitivityReport.from_json(REPORT))
    diff.set_plans({"defaults": {"sparsity": 0.5}}, {"defaults": {"sparsity": 0.7}})
    pareto._on_points_clicked(["a"], CTRL)
    pareto._on_points_clicked(["b"], CTRL)
    qtbot.waitUntil(lambda: curves.redraws > 0, timeout=120_000)  # the curves' first tick
    for name, widget in (("pareto", pareto), ("curves", curves), ("heatmap", heat),
                         ("plan-diff", diff)):
        assert widget.grab().save(f"/tmp/plot-{name}.png")
