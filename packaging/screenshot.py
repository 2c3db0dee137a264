"""Refresh the README screenshot: ``QT_QPA_PLATFORM=offscreen python packaging/screenshot.py``.

Opens the demo in the real main window, runs four quick experiments and a sensitivity sweep in a
throw-away project (about two minutes), plans int8 with 50% channels on the residual block, and
saves offscreen grabs of the window with the Experiments and the Sensitivity tabs in front.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from PySide6.QtCore import QEventLoop, QSettings, QTimer

from studio.core.plan import LayerSpec, Plan
from studio.core.plan.stages import DataSection, DistillSection, TrainSection

OUT = Path(__file__).resolve().parent / "screenshots"


def wait_for(signal, timeout_ms: int = 30_000) -> None:
    loop = QEventLoop()
    signal.connect(loop.quit)
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()


def run_experiments(window) -> None:
    """A few quick experiments so the Pareto plot has something to show."""
    plans = (
        {"": {"weight_bits": "int8", "act_bits": "int8"}},
        {"": {"sparsity": 0.5, "granularity": "channels"}, "head": {"exclude": True}},
        {"": {"sparsity": 0.5, "granularity": "channels", "weight_bits": "int8",
              "act_bits": "int8"}, "head": {"exclude": True}},
        {"": {"sparsity": 0.75, "granularity": "channels"}, "head": {"exclude": True}},
    )
    for specs in plans:
        window.controller.replace_plan(
            Plan({name: LayerSpec(**values) for name, values in specs.items()}), "plan")
        wait_for(window.compress.run_plan().finished, 180_000)


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from studio.qt.app import application
    from studio.qt.main_window import MainWindow

    app = application()
    settings = QSettings(str(OUT / ".settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings, Path(tempfile.mkdtemp()) / "recovery")
    window.show()
    window.welcome.set_recent(["~/models/resnet18-cifar.pt2", "~/models/minilm/model.onnx"])
    app.processEvents()
    window.grab().save(str(OUT / "welcome.png"))

    window.open_path("demo")
    wait_for(window.workspaceOpened)
    window.resize(1440, 980)
    with tempfile.TemporaryDirectory() as folder:
        window.workspace.stages = {"train": TrainSection(epochs=1, lr=0.002),
                                   "data": DataSection(train_samples=1500),
                                   "distill": DistillSection()}
        window.save_project_to(Path(folder) / "demo-project")
        run_experiments(window)
        wait_for(window.compress.run_sensitivity("channels", subset=200).finished, 180_000)
        controller = window.controller
        controller.replace_plan(Plan(), "clear")
        controller.set_field([""], "weight_bits", "int8")
        controller.set_field([""], "act_bits", "int8")
        controller.set_field(["res"], "granularity", "channels")
        controller.set_field(["res"], "sparsity", 0.5)
        controller.set_field(["head"], "exclude", True)
        window.view.expandAll()
        tree = window.workspace.tree
        window.view.setCurrentIndex(window.proxy.mapFromSource(
            window.tree_model.index_of(tree.get("res").id)))
        window.dock["Experiments"].raise_()
        app.processEvents()
        window.grab().save(str(OUT / "main-window.png"))
        window.dock["Sensitivity"].raise_()
        app.processEvents()
        window.grab().save(str(OUT / "sensitivity.png"))
    (OUT / ".settings.ini").unlink(missing_ok=True)
    window.controller.undo_stack.setClean()
    window.close()
    print(f"wrote {OUT / 'main-window.png'} and {OUT / 'welcome.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
