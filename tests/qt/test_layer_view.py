"""The layer view in the real window: computed off the GUI thread, cached, drawn (an offscreen
screenshot that is not blank), the SQNR column coloured, and the estimate's caveats shown."""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QImage

from studio.qt.columns import SQNR_COLUMN
from studio.qt.main_window import MainWindow

HANG_MS = 120_000
SHOTS = Path(os.environ.get("STUDIO_SCREENSHOTS", ""))


def _plan(win: MainWindow, name: str, **fields: object) -> None:
    for field, value in fields.items():
        win.controller.set_field([name], field, value)


def _distinct_colours(image: QImage, step: int = 3) -> int:
    return len({image.pixel(x, y) for x in range(0, image.width(), step)
                for y in range(0, image.height(), step)})


def test_selected_layer_is_drawn_from_a_worker_and_cached(qtbot, demo_window: MainWindow,
                                                         tmp_path: Path) -> None:
    win = demo_window
    _plan(win, "res.conv2", granularity="2:4", weight_bits="int4")
    win.show_dock("Layer view")
    computed: list[object] = []
    win.layer_views.statsReady.connect(computed.append)
    with qtbot.waitSignal(win.layer_views.statsReady, timeout=HANG_MS):
        win.select_layer("res.conv2")
    stats = win.layer_view.stats
    assert stats is not None and stats.name == "res.conv2" and stats.group == 4
    assert "SQNR at int4" in win.layer_view.header.text()
    assert "demo calibration digits" in win.layer_view.header.text()
    assert win.layer_view.codes.titleLabel.text.startswith("Integer grid at int4: 15 levels")

    win.layer_view.resize(1280, 260)
    image = win.layer_view.grab().toImage()
    path = (SHOTS if SHOTS.parts else tmp_path) / "layer-view.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    assert image.save(str(path))
    assert _distinct_colours(image) > 20  # plots, bars, the pattern: not a blank widget

    win.select_layer("res.conv1.0")  # a block: not weighted itself
    win.select_layer("stem.0")
    qtbot.waitUntil(lambda: win.layer_view.stats is not None
                    and win.layer_view.stats.name == "stem.0", timeout=HANG_MS)
    count = len(computed)
    win.select_layer("res.conv2")  # back: from the cache, at once
    assert win.layer_view.stats is not None and win.layer_view.stats.name == "res.conv2"
    assert len(computed) == count

    _plan(win, "res.conv2", weight_bits="int8")  # a plan edit recomputes it
    qtbot.waitUntil(lambda: "SQNR at int8" in win.layer_view.header.text(), timeout=HANG_MS)


def test_a_container_or_many_rows_explain_themselves(demo_window: MainWindow) -> None:
    win = demo_window
    win.select_layer("res")
    assert "has no weight matrix of its own" in win.layer_view.header.text()
    assert win.layer_view.stats is None


def test_sqnr_column_is_filled_and_coloured(qtbot, demo_window: MainWindow) -> None:
    win = demo_window
    _plan(win, "res.conv2", weight_bits="int2")
    _plan(win, "stem.0", weight_bits="int8")
    model = win.tree_model

    def cell(name: str, role: Qt.ItemDataRole = Qt.ItemDataRole.DisplayRole) -> object:
        index = model.index_of(win.workspace.tree.get(name).id, SQNR_COLUMN)
        return model.data(index, role)

    qtbot.waitUntil(lambda: bool(cell("res.conv2") and cell("stem.0")), timeout=HANG_MS)
    low = float(cell("res.conv2").split()[0])
    high = float(cell("stem.0").split()[0])
    assert low < 15 < 30 < high
    red = cell("res.conv2", Qt.ItemDataRole.BackgroundRole)
    green = cell("stem.0", Qt.ItemDataRole.BackgroundRole)
    assert red.hueF() < 0.05 and 0.25 < green.hueF() < 0.4
    assert cell("block1.0") == ""  # float: no quantization error to show


def test_estimate_says_what_will_not_pay_off(demo_window: MainWindow) -> None:
    win = demo_window
    _plan(win, "res.conv2", sparsity=0.5, granularity="channels")
    assert win.totals.caveats_box.isVisibleTo(win)
    assert "res.conv2, block2.0 left whole" in win.totals.caveats.text()
    _plan(win, "block2.0", sparsity=0.5, granularity="channels")
    assert not win.totals.caveats_box.isVisibleTo(win)
    _plan(win, "res.conv1.0", weight_bits="int4", act_bits="int8")
    assert "int4/int2 convolutions" in win.totals.caveats.text()
    assert "ORT stores and runs them as int8" in win.totals.caveats.toolTip()


def test_the_layer_view_gets_room_and_the_tree_keeps_its_names(qtbot, demo_window: MainWindow
                                                              ) -> None:
    """At the default size (it fits 1280x800): the layer view grows the bottom docks toward its
    plots' height, the plan keeps its editors whole (no sideways scrolling), and choosing a row
    by a far-right cell does not scroll the layer names out of sight."""
    win = demo_window
    win.resize(1240, 740)
    qtbot.waitUntil(lambda: win.height() == 740, timeout=HANG_MS)
    dock = win.dock["Layer view"]
    before = win.dock["Experiments"].height()
    win.show_dock("Layer view")
    wanted = min(win.layer_view.sizeHint().height(), win.height() // 2)
    # the panes above keep their minimum heights, so the dock may stop a little short
    qtbot.waitUntil(lambda: dock.height() >= 0.9 * wanted, timeout=HANG_MS)
    assert dock.height() > before

    win.view.expandAll()
    bar = win.view.horizontalScrollBar()
    assert bar.maximum() > 0  # the columns are wider than the tree: it can scroll sideways
    bar.setValue(0)
    last = win.proxy.columnCount() - 1
    win.select_layer("res.conv2")
    win.view.setCurrentIndex(win.view.currentIndex().siblingAtColumn(last))
    assert bar.value() == 0

    inspector = win.inspector_scroll
    assert not inspector.horizontalScrollBar().isVisible()
    assert inspector.viewport().width() >= win.inspector.minimumSizeHint().width()
