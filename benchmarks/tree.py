"""How long the layer tree takes to build and to show, on the demo CNN and on BERT-base.

    python -m benchmarks.tree [--json PATH] [--layers N] [--skip-gui]

Times the core tree build (one warm-up run, whose time is reported as the first run, then the
median of ``--repeats`` runs), then the GUI side: building the Qt tree model and filter proxy
over the BERT tree and walking every row, and one filter keystroke. The GUI figures are null when
the Qt classes cannot be imported, so the core figures can still be tracked.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from benchmarks.common import machine_info, write_json
from benchmarks.models import build_bert_base, count_modules, count_params
from studio.core.graph.torch_tree import build_torch_tree
from studio.core.graph.tree import LayerTree
from studio.core.models.inputs import InputSpec
from studio.core.plan.plan import Plan

BERT_INPUT = InputSpec((1, 128), "int64")
FILTER_KEYSTROKES = ("a", "at", "att", "atte", "atten")
"""The first five keystrokes of typing "attention" into the layer filter."""


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def time_tree_build(module: nn.Module, example: InputSpec | None, name: str,
                    repeats: int = 3) -> dict[str, Any]:
    """First (cold) build time and median of ``repeats`` warm builds, in seconds.

    The first build pays one-off costs (hook and dispatcher setup, allocator warm-up) that a user
    pays once per session, so both are worth tracking.
    """
    first, tree = _timed(lambda: build_torch_tree(module, example, name))
    runs = [_timed(lambda: build_torch_tree(module, example, name))[0] for _ in range(repeats)]
    return {"first_s": first, "median_s": statistics.median(runs), "runs_s": runs, "tree": tree}


def _walk_all(model: Any, columns: int) -> int:
    """Visit every index of ``model`` (depth first) and read each cell's display text.

    This is what a fully expanded view asks for, and it forces a lazy model to create every
    index it would otherwise defer.
    """
    from PySide6.QtCore import QModelIndex, Qt

    display = Qt.ItemDataRole.DisplayRole
    visited = 0
    stack = [QModelIndex()]
    while stack:
        parent = stack.pop()
        if model.canFetchMore(parent):
            model.fetchMore(parent)
        for row in range(model.rowCount(parent)):
            for column in range(columns):
                model.data(model.index(row, column, parent), display)
            visited += 1
            stack.append(model.index(row, 0, parent))
    return visited


def time_gui(tree: LayerTree, repeats: int = 3) -> dict[str, Any]:
    """Qt-side figures for ``tree``: model + proxy + view population, and one filter keystroke.

    ``large_gui_populate_s`` (median of ``repeats`` after a first, reported apart): resolve an
    empty plan over the tree, construct ``LayerTreeModel`` and ``LayerFilterProxy``, set the
    proxy on a shown ``QTreeView``, process events, and walk every row through the proxy.
    ``filter_keystroke_ms``: median over the keystrokes of typing "attention" of
    ``set_filter_text`` + ``processEvents``. A proxy that debounces typing on a timer would be
    measured without the debounce delay; call its immediate path here if it grows one.
    """
    result: dict[str, Any] = {
        "large_gui_populate_s": None, "large_gui_populate_first_s": None,
        "filter_keystroke_ms": None, "filter_keystroke_runs_ms": None,
        "gui_rows_visited": None, "filter_rows_matching": None, "gui_note": None,
    }
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        import PySide6
        from PySide6.QtWidgets import QApplication, QTreeView

        from studio.qt.tree_filter import LayerFilterProxy
        from studio.qt.tree_model import LayerTreeModel
    except ImportError as error:
        result["gui_note"] = f"GUI classes not importable ({error}); GUI figures skipped"
        print(f"note: {result['gui_note']}", file=sys.stderr)
        return result

    app = QApplication.instance() or QApplication(sys.argv[:1])
    result["pyside6_version"] = PySide6.__version__
    result["qt_platform"] = app.platformName()
    keep: dict[str, Any] = {}

    def populate() -> int:
        # The model styles its plan columns from the resolved plan: an empty plan, as on open.
        model = LayerTreeModel(tree, Plan().resolve(tree))
        proxy = LayerFilterProxy()
        proxy.setSourceModel(model)
        view = QTreeView()
        view.setModel(proxy)
        view.resize(1200, 800)
        view.show()
        QApplication.processEvents()
        keep.update(model=model, proxy=proxy, view=view)
        return _walk_all(proxy, proxy.columnCount())

    # The first population pays Qt's one-off costs (fonts, style, platform plugin); the app pays
    # those when its window opens, not when a model loads, so the median of later runs is the
    # headline figure.
    runs_s = []
    for _ in range(1 + repeats):
        if keep:
            keep["view"].close()
            keep["view"].deleteLater()
            QApplication.processEvents()
        populate_s, visited = _timed(populate)
        runs_s.append(populate_s)
    result["large_gui_populate_first_s"] = runs_s[0]
    result["large_gui_populate_s"] = statistics.median(runs_s[1:])
    result["large_gui_populate_runs_s"] = runs_s[1:]
    result["gui_rows_visited"] = visited

    proxy = keep["proxy"]
    runs_ms = []
    for text in FILTER_KEYSTROKES:
        gc.collect()
        start = time.perf_counter()
        proxy.set_filter_text(text)
        QApplication.processEvents()
        runs_ms.append((time.perf_counter() - start) * 1000)
    # Outside the timing: proof the filter did something (rows left after the last keystroke).
    result["filter_rows_matching"] = _walk_all(proxy, 1)
    proxy.set_filter_text("")
    QApplication.processEvents()
    result["filter_keystroke_ms"] = statistics.median(runs_ms)
    result["filter_keystroke_runs_ms"] = runs_ms

    keep["view"].close()
    keep["view"].deleteLater()
    QApplication.processEvents()
    return result


def run(layers: int = 12, repeats: int = 3, gui: bool = True) -> dict[str, Any]:
    """All figures as one flat dict (trees left out), ready for JSON."""
    from studio.core.workspace import open_workspace

    figures: dict[str, Any] = {"machine": machine_info()}

    workspace = open_workspace("demo")
    demo_module = workspace.loaded.module
    assert demo_module is not None
    demo = time_tree_build(demo_module, workspace.example, workspace.loaded.name, repeats)
    figures.update(
        demo_tree_build_s=demo["median_s"], demo_tree_build_first_s=demo["first_s"],
        demo_tree_build_runs_s=demo["runs_s"], demo_modules=count_modules(demo_module),
        demo_params=count_params(demo_module), demo_tree_nodes=len(demo["tree"]),
    )

    model_build_s, bert = _timed(lambda: build_bert_base(layers))
    name = "bert-base" if layers == 12 else f"bert-base-{layers}-layers"
    large = time_tree_build(bert, BERT_INPUT, name, repeats)
    tree: LayerTree = large["tree"]
    figures.update(
        large_model=name, large_input=str(BERT_INPUT), large_model_build_s=model_build_s,
        large_tree_build_s=large["median_s"], large_tree_build_first_s=large["first_s"],
        large_tree_build_runs_s=large["runs_s"], large_modules=count_modules(bert),
        large_params=count_params(bert), large_tree_nodes=len(tree),
        large_macs=tree.root.total_macs,
    )
    del bert
    if gui:
        figures.update(time_gui(tree, repeats))
    else:
        figures.update(large_gui_populate_s=None, filter_keystroke_ms=None,
                       gui_note="skipped (--skip-gui)")
    return figures


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def print_table(figures: dict[str, Any]) -> None:
    machine = figures["machine"]
    rows = [
        ("demo modules / params",
         f"{_fmt(figures['demo_modules'])} / {_fmt(figures['demo_params'])}"),
        ("demo tree build (first)", _fmt(figures["demo_tree_build_first_s"], " s")),
        ("demo tree build (median)", _fmt(figures["demo_tree_build_s"], " s")),
        (f"{figures['large_model']} modules / params",
         f"{_fmt(figures['large_modules'])} / {_fmt(figures['large_params'])}"),
        ("large model construction", _fmt(figures["large_model_build_s"], " s")),
        ("large tree build (first)", _fmt(figures["large_tree_build_first_s"], " s")),
        ("large tree build (median)", _fmt(figures["large_tree_build_s"], " s")),
        ("large GUI populate (first)", _fmt(figures.get("large_gui_populate_first_s"), " s")),
        ("large GUI populate (median)", _fmt(figures["large_gui_populate_s"], " s")),
        ("large GUI rows walked", _fmt(figures.get("gui_rows_visited"))),
        ("filter keystroke (median)", _fmt(figures["filter_keystroke_ms"], " ms")),
        ('rows left after "atten"', _fmt(figures.get("filter_rows_matching"))),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"machine: {machine['cpu_count']} CPUs, {machine['torch_threads']} torch threads, "
          f"torch {machine['torch_version']}, Python {machine['python']}")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    if figures.get("gui_note"):
        print(f"  note: {figures['gui_note']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--layers", type=int, default=12,
                        help="encoder layers of the large model (12 = BERT-base; 56 gives "
                             "1,020 modules)")
    parser.add_argument("--repeats", type=int, default=3, help="warm runs to take the median of")
    parser.add_argument("--skip-gui", action="store_true", help="time the core only")
    args = parser.parse_args(argv)
    figures = run(args.layers, args.repeats, gui=not args.skip_gui)
    print_table(figures)
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
