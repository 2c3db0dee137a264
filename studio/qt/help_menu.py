"""The Help menu: About (with the versions that matter when reporting a problem), a short guide
to the workflow, and the keyboard shortcuts read from the window's own actions (so the list
never drifts from what the keys do)."""

from __future__ import annotations

import platform
import sys
from html import escape
from importlib import metadata

from PySide6 import __version__ as pyside_version
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QMainWindow, QMessageBox

from studio import __version__

GUIDE = """<h3>The workflow</h3><ol>
<li><b>Open</b> a model (File ▸ Open: .pt, .safetensors, .pt2, .onnx or a Hugging Face folder),
or File ▸ Open Demo. The layer tree shows every layer's shape, params, MACs and bytes.</li>
<li><b>Plan</b>: select layers in the tree and set sparsity, granularity and bits in the Plan
panel; settings inherit down the tree. The estimate below updates as you edit.</li>
<li><b>Data and settings</b>: the Data tab picks what to fine-tune, calibrate and measure on;
Run settings hold training, distillation, quantization and export options.</li>
<li><b>Run</b> (Compress ▸ Run Plan, Ctrl+R): the job runs in its own process; the status bar
shows its progress. Each finished run becomes a row in the Experiments table and a point on the
Pareto plot. An unsaved model keeps its runs in a scratch project; File ▸ Save Project As moves
them where you want.</li>
<li><b>Read and compare</b>: the Report tab says what each stage did and what stayed float and
why; select two experiments and Compare to see their figures side by side.</li>
<li><b>Export</b>: File ▸ Export Compressed Model writes the ONNX file where you choose, with
the compressed torch weights (.safetensors) beside it.</li>
<li>Optional: Compress ▸ Sensitivity Analysis measures how much each layer can take, and
Allocate to Target proposes a plan for a size, MACs or metric budget.</li></ol>"""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """What a bug report needs: the studio's and its engines' versions."""
    found = {"Compression Studio": __version__, "Python": platform.python_version(),
             "PySide6": pyside_version}
    for package in ("torch", "onnx", "onnxruntime", "pyqtgraph"):
        found[package] = _version(package)
    found["platform"] = f"{platform.system()} {platform.machine()}"
    return found


def about_text() -> str:
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>"
                   for k, v in versions().items())
    return ("<h3>Compression Studio</h3><p>Prune, quantize and distill neural networks, and "
            f"export optimized ONNX files.</p><table>{rows}</table>")


def shortcuts_text(window: QMainWindow) -> str:
    """Every action of the window's menus that has a shortcut, menu by menu."""
    rows = []
    for menu_action in window.menuBar().actions():
        menu = menu_action.menu()
        if menu is None:
            continue
        for action in menu.actions():
            keys = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
            if keys:
                label = action.text().replace("&", "")
                rows.append(f"<tr><td><b>{escape(keys)}</b></td><td>{escape(label)}</td></tr>")
    return "<h3>Keyboard shortcuts</h3><table>" + "".join(rows) + "</table>"


def add_help_menu(window: QMainWindow) -> dict[str, QAction]:
    """Add the Help menu to ``window``; returns its actions by name (tests trigger them)."""
    menu = window.menuBar().addMenu("&Help")

    def show(title: str, text: str) -> None:
        box = QMessageBox(window)
        box.setWindowTitle(title)
        box.setText(text)
        box.open()  # not modal to the whole app: the user can keep working beside it

    actions = {"guide": menu.addAction("Workflow &Guide",
                                       lambda: show("Workflow guide", GUIDE)),
               "shortcuts": menu.addAction("Keyboard &Shortcuts",
                                           lambda: show("Shortcuts", shortcuts_text(window))),
               "about": menu.addAction("&About Compression Studio",
                                       lambda: show("About", about_text()))}
    actions["guide"].setShortcut(QKeySequence(QKeySequence.StandardKey.HelpContents))
    if sys.platform != "darwin":
        menu.insertSeparator(actions["about"])
    return actions
