"""Refresh the README screenshot: ``QT_QPA_PLATFORM=offscreen python packaging/screenshot.py``.

Opens the demo in the real main window, plans 50% channel pruning on the residual block and int8
weights everywhere (the way a user would start), and saves an offscreen grab of the window.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from PySide6.QtCore import QEventLoop, QSettings, QTimer

OUT = Path(__file__).resolve().parent / "screenshots"


def wait_for(signal, timeout_ms: int = 30_000) -> None:
    loop = QEventLoop()
    signal.connect(loop.quit)
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from studio.qt.app import application
    from studio.qt.main_window import MainWindow

    app = application()
    settings = QSettings(str(OUT / ".settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings)
    window.show()
    window.welcome.set_recent(["~/models/resnet18-cifar.pt2", "~/models/minilm/model.onnx"])
    app.processEvents()
    window.grab().save(str(OUT / "welcome.png"))

    window.open_path("demo")
    wait_for(window.workspaceOpened)
    controller = window.controller
    controller.set_field([""], "weight_bits", "int8")
    controller.set_field(["res"], "granularity", "channels")
    controller.set_field(["res"], "sparsity", 0.5)
    controller.set_field(["head.2"], "exclude", True)
    window.view.expandAll()
    tree = window.workspace.tree
    window.view.setCurrentIndex(window.proxy.mapFromSource(
        window.tree_model.index_of(tree.get("res").id)))
    app.processEvents()
    window.grab().save(str(OUT / "main-window.png"))
    (OUT / ".settings.ini").unlink(missing_ok=True)
    window.controller.undo_stack.setClean()
    window.close()
    print(f"wrote {OUT / 'main-window.png'} and {OUT / 'welcome.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
