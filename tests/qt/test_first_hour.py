"""The first hour in the window: real dialogs that check what is typed (sweep, target, example
input), a Help menu, training plots that explain themselves before data and show single
points, a status bar that shows a running job, a window that fits 1280×800 and a notice that
does not move the layout."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint
from PySide6.QtWidgets import QDialogButtonBox, QMessageBox

from studio.core.engine.allocate import Target
from studio.qt.compress_dialogs import (
    ExampleInputDialog,
    SweepDialog,
    TargetDialog,
    parse_levels,
)
from studio.qt.help_menu import versions
from studio.qt.main_window import MainWindow
from studio.qt.plots import CurvesPlot


def _ok(dialog) -> bool:
    return dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).isEnabled()


def test_sweep_dialog_checks_levels_and_sizes_the_sweep(qtbot) -> None:
    dialog = SweepDialog(None, seconds=60.0, selected=["res.conv1.0", "res.conv2"], total=8)
    qtbot.addWidget(dialog)
    assert _ok(dialog) and "About 60 s for every layer" in dialog.message.text()
    dialog.levels.setText("0.3, 60%")
    dialog.bits["int2"].setChecked(False)
    dialog.samples.setValue(250)
    dialog.some_layers.setChecked(True)
    choice = dialog.choice()
    assert choice.options() == {"granularity": "unstructured", "sparsity_levels": [0.3, 0.6],
                                "bit_levels": ["int8", "int4"], "subset": 250,
                                "layers": ["res.conv1.0", "res.conv2"]}
    assert "About 5 s for 2 layers" in dialog.message.text()  # 60 × 4/6 × 1/2 × 2/8
    dialog.levels.setText("0.3, 1.5")
    assert not _ok(dialog) and "between 0 and 1" in dialog.message.text()
    with pytest.raises(Exception, match="not a number"):
        parse_levels("half")


def test_target_dialog_refuses_what_the_allocator_would(qtbot) -> None:
    dialog = TargetDialog(None, "Accuracy")
    qtbot.addWidget(dialog)
    assert dialog.target() == Target("size", 0.25) and dialog.value.suffix() == " × original"
    dialog.value.setValue(1.5)
    assert not _ok(dialog) and dialog.message.text()
    dialog.kind.setCurrentIndex(2)
    assert dialog.kind.currentText() == "Accuracy drop" and dialog.value.suffix() == " points"
    assert _ok(dialog) and dialog.target() == Target("accuracy_drop", 0.5)


def test_example_input_dialog_names_a_bad_shape(qtbot) -> None:
    dialog = ExampleInputDialog(None, "1,16:int64")
    qtbot.addWidget(dialog)
    assert dialog.text() == "1,16:int64" and _ok(dialog)
    dialog.shape.setText("0x1")
    assert not _ok(dialog) and "positive integers" in dialog.message.text()
    dialog.shape.setText("1, 1, 28, 28")
    dialog.dtype.setCurrentIndex(0)
    assert dialog.text() == "1, 1, 28, 28" and _ok(dialog)


def test_help_menu_shows_versions_guide_and_shortcuts(qtbot, window: MainWindow) -> None:
    import torch

    assert versions()["torch"] == torch.__version__.split("+")[0] or \
        versions()["torch"] == torch.__version__
    window.help_actions["shortcuts"].trigger()
    shown = [box for box in window.findChildren(QMessageBox) if box.isVisible()]
    assert len(shown) == 1 and "Ctrl+R" in shown[0].text() and "Run Plan" in shown[0].text()
    assert "Export Compressed Model" in shown[0].text()
    shown[0].close()
    window.help_actions["about"].trigger()
    assert any("onnxruntime" in box.text() for box in window.findChildren(QMessageBox)
               if box.isVisible())
    window.help_actions["guide"].trigger()
    assert any("Export" in box.text() and "scratch project" in box.text()
               for box in window.findChildren(QMessageBox) if box.isVisible())


def test_training_plot_explains_itself_then_shows_single_points(qtbot) -> None:
    curves = CurvesPlot()
    qtbot.addWidget(curves)
    assert curves._empty.isVisible()
    curves.append("compressed", "accuracy", 0, 0.97)  # one point: once a run
    curves.flush()
    assert not curves._empty.isVisible()
    [curve] = curves._curves.values()
    assert curve.opts["symbol"] == "o"  # a single point is drawn, not an invisible line
    legend = curves._legends[curves.metric_plot]
    assert legend.parentItem() is not curves.metric_plot.vb  # beside the plot, not over it
    assert [label.text for _sample, label in legend.items] == ["compressed · accuracy"]
    curves.append("distill", "accuracy", 3, 0.96)  # after epoch 3
    curves.append("distill", "loss", 120, 0.4)  # losses by step: another axis, not linked
    assert curves.last_epoch() == 3.0
    assert curves.metric_plot.getAxis("bottom").labelText == "Epoch"
    assert curves.metric_plot.getViewBox().linkedView(0) is None
    curves.clear()
    assert curves._empty.isVisible() and not legend.items


def test_the_window_fits_and_a_notice_moves_nothing(qtbot, window: MainWindow,
                                                    sigterm_ignoring_job) -> None:
    assert window.width() <= 1280 and window.height() <= 770
    assert window.minimumSizeHint().height() <= 770
    assert not window.undo_action.icon().isNull()
    before = window.filter_edit.mapTo(window, QPoint(0, 0))
    window.notices.show_notice("error", "something to read")
    assert window.notices.isVisible()
    assert window.filter_edit.mapTo(window, QPoint(0, 0)) == before

    assert not window.job_status.isVisible()
    job = sigterm_ignoring_job()
    with qtbot.waitSignal(job.event, timeout=120_000):
        window.jobs.submit("Run Plan: experiment 1", job)
    qtbot.waitUntil(window.job_status.isVisible, timeout=5000)
    assert window.job_status.label.text().startswith("Run Plan: experiment 1")
    window.jobs.model.cancel(0)
    qtbot.waitUntil(lambda: job.done, timeout=120_000)
    qtbot.waitUntil(lambda: not window.job_status.isVisible(), timeout=5000)
    assert window.jobs.model.index(0, 2).data() == ""  # cancelled: no stale stage percent


def test_the_sensitivity_tab_explains_itself_before_a_sweep(qtbot) -> None:
    from studio.core.reports.sensitivity_report import SensitivityReport
    from studio.qt.plots import SensitivityHeatmap
    from tests.qt.test_plots import REPORT

    heatmap = SensitivityHeatmap()
    qtbot.addWidget(heatmap)
    assert heatmap.pages.currentWidget() is heatmap.empty
    assert "No sensitivity sweep yet" in heatmap.empty.text()
    heatmap.set_report(SensitivityReport.from_json(REPORT))
    assert heatmap.pages.currentWidget() is not heatmap.empty
