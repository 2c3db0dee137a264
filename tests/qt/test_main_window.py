"""The main window driven as a user would: open, select, edit, undo, save, reopen, recipes."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PySide6.QtCore import QItemSelectionModel, QMimeData, QPoint, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QComboBox
from safetensors.torch import save_file

from studio.core.plan.recipe import read_recipe
from studio.qt.columns import COLUMNS
from studio.qt.main_window import MainWindow
from studio.qt.tree_model import NODE_ID_ROLE

PLAN_SPARSITY = next(i for i, c in enumerate(COLUMNS) if c.title == "Plan: sparsity")
PLAN_BITS = next(i for i, c in enumerate(COLUMNS) if c.title == "Plan: bits")


def select(win: MainWindow, *names: str) -> None:
    """Select rows in the view, as clicks and ctrl-clicks would."""
    selection = win.view.selectionModel()
    selection.clearSelection()
    flags = QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows
    for name in names:
        source = win.tree_model.index_of(win.workspace.tree.get(name).id)
        selection.select(win.proxy.mapFromSource(source), flags)


def cell(win: MainWindow, name: str, column: int) -> str:
    source = win.tree_model.index_of(win.workspace.tree.get(name).id, column)
    return win.tree_model.data(source)


def choose(combo: QComboBox, value: str) -> None:
    """Pick an item as a click in the popup does: the index changes, then ``activated``."""
    target = combo.findData(value)
    assert target >= 0, value
    combo.setCurrentIndex(target)
    combo.activated.emit(target)


def type_sparsity(qtbot, win: MainWindow, percent: str) -> None:
    editor = win.inspector.sparsity.lineEdit()
    editor.selectAll()
    qtbot.keyClicks(editor, percent)
    qtbot.keyClick(editor, Qt.Key.Key_Return)


def test_demo_opens_with_totals_at_the_root(demo_window: MainWindow) -> None:
    win = demo_window
    tree = win.workspace.tree
    assert win.proxy.rowCount() == 1
    root = win.proxy.index(0, 0)
    assert win.proxy.rowCount(root) == len(tree.root.children)
    assert win.view.isExpanded(root)
    assert win.inspector.names == [""]  # the root is selected: the whole model
    assert win.totals.cells["params"][0].text() == "103k"
    assert "demo-cnn" in win.windowTitle()


def test_editing_a_layer_updates_tree_totals_and_undo(qtbot, demo_window: MainWindow) -> None:
    win = demo_window
    select(win, "res.conv2")
    assert win.inspector.names == ["res.conv2"]
    bytes_before = win.totals.cells["nbytes"][1].text()
    macs_before = win.totals.cells["macs"][1].text()

    type_sparsity(qtbot, win, "50")
    choose(win.inspector.granularity, "channels")
    choose(win.inspector.weight_bits, "int8")

    spec = win.workspace.plan.spec("res.conv2")
    assert (spec.sparsity, spec.granularity, spec.weight_bits) == (0.5, "channels", "int8")
    assert cell(win, "res.conv2", PLAN_SPARSITY) == "50% ch"
    assert cell(win, "res.conv2", PLAN_BITS) == "int8"
    assert win.totals.cells["nbytes"][1].text() != bytes_before
    # res.conv2 is added to block2.0's output: cut alone, its channels stay, and it says so
    assert win.totals.cells["macs"][1].text() == macs_before
    assert "res.conv2, block2.0 left whole" in win.totals.caveats.text()
    assert win.windowTitle().endswith("*")

    stack = win.controller.undo_stack
    assert [stack.text(i) for i in range(stack.count())] == [
        "Set sparsity of res.conv2 to 0.5", "Set granularity of res.conv2 to channels",
        "Set weight bits of res.conv2 to int8"]
    for _ in range(3):
        win.undo_action.trigger()
    assert win.workspace.plan.specs == {}
    assert cell(win, "res.conv2", PLAN_SPARSITY) == "–"
    assert win.totals.cells["nbytes"][1].text() == bytes_before
    win.redo_action.trigger()
    assert win.workspace.plan.spec("res.conv2").sparsity == 0.5


def test_parent_setting_is_inherited_and_can_be_reset(qtbot, demo_window: MainWindow) -> None:
    win = demo_window
    select(win, "res")
    type_sparsity(qtbot, win, "30")
    select(win, "res.conv1.0")
    assert win.inspector.sparsity.value() == 30.0
    assert "inherited from res" in win.inspector.rows["sparsity"].hint.text()
    assert not win.inspector.rows["sparsity"].reset.isEnabled()
    type_sparsity(qtbot, win, "10")
    assert win.workspace.plan.spec("res.conv1.0").sparsity == 0.1
    qtbot.mouseClick(win.inspector.rows["sparsity"].reset, Qt.MouseButton.LeftButton)
    assert win.workspace.plan.spec("res.conv1.0").sparsity is None
    assert win.inspector.sparsity.value() == 30.0


def test_a_selection_is_edited_in_one_undo_step(qtbot, demo_window: MainWindow) -> None:
    win = demo_window
    select(win, "stem.0", "block1.0", "head.2")
    assert len(win.inspector.names) == 3
    choose(win.inspector.weight_bits, "int4")
    assert all(win.workspace.plan.spec(n).weight_bits == "int4"
               for n in ("stem.0", "block1.0", "head.2"))
    win.undo_action.trigger()
    assert win.workspace.plan.specs == {}


def test_slider_drag_is_one_undo_step(qtbot, demo_window: MainWindow) -> None:
    win = demo_window
    select(win, "block2.0")
    slider = win.inspector.sparsity_slider
    slider.setSliderDown(True)
    win.inspector._begin_drag()
    for value in (10, 20, 35, 40):
        slider.setValue(value)
    slider.setSliderDown(False)
    win.inspector._end_drag()
    assert win.workspace.plan.spec("block2.0").sparsity == 0.4
    assert win.controller.undo_stack.count() == 1
    win.undo_action.trigger()
    assert win.workspace.plan.spec("block2.0").sparsity is None


def test_save_and_reopen_project(qtbot, demo_window: MainWindow, tmp_path: Path, make_window,
                                 open_and_wait) -> None:
    win = demo_window
    select(win, "res")
    type_sparsity(qtbot, win, "25")
    choose(win.inspector.act_bits, "int8")
    folder = tmp_path / "my-project"
    assert win.project.save_project_to(folder)
    assert not win.windowTitle().endswith("*")
    assert (folder / "project.yaml").is_file()
    plan = win.workspace.plan.copy()

    other = make_window()
    open_and_wait(other, str(folder))
    assert other.workspace.plan == plan
    assert other.workspace.example == win.workspace.example
    assert cell(other, "res.conv2", PLAN_SPARSITY) == "25%"
    assert str(folder / "project.yaml") in other.recent.paths()


def test_recipe_round_trip_and_bad_recipe(qtbot, demo_window: MainWindow, tmp_path: Path) -> None:
    win = demo_window
    select(win, "block1.0")
    choose(win.inspector.granularity, "2:4")
    recipe = tmp_path / "plan.yaml"
    win.project.export_recipe(recipe)
    assert read_recipe(recipe).plan.layers["block1.0"].granularity == "2:4"
    plan = win.workspace.plan.copy()
    win.undo_action.trigger()
    assert win.workspace.plan.specs == {}

    win.project.import_recipe(recipe)
    assert win.workspace.plan == plan
    win.undo_action.trigger()  # an import is one undoable step
    assert win.workspace.plan.specs == {}

    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 1\nplan:\n  layers:\n    res.conv_1: {sparsity: 0.2}\n")
    win.project.import_recipe(bad)
    assert win.notices.isVisible() and win.notices.kind == "error"
    assert "res.conv1" in win.notices.text.text() and "line 4" in win.notices.text.text()
    assert win.workspace.plan.specs == {}


def test_bad_files_give_a_notice_and_keep_the_window(qtbot, demo_window: MainWindow,
                                                     tmp_path: Path) -> None:
    win = demo_window
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage that is not a protobuf" * 3)
    with qtbot.waitSignal(win.project.openFailed, timeout=120_000):
        win.project.open_path(str(broken))
    assert win.notices.kind == "error" and "broken.onnx" in win.notices.text.text()
    assert win.workspace.tree.model_name == "demo-cnn"  # the open model is untouched
    select(win, "stem.0")
    type_sparsity(qtbot, win, "20")
    assert win.workspace.plan.spec("stem.0").sparsity == 0.2


def test_pickled_module_needs_consent(qtbot, window: MainWindow, tmp_path: Path,
                                      monkeypatch, open_and_wait) -> None:
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3)), path)
    asked: list[Path] = []
    monkeypatch.setattr(window, "confirm_trust", lambda p: asked.append(p) or False)
    with qtbot.waitSignal(window.project.openFailed, timeout=120_000):
        window.project.open_path(str(path))
    assert asked == [path] and window.workspace is None
    assert "trust" in window.notices.text.text()

    monkeypatch.setattr(window, "confirm_trust", lambda p: True)
    monkeypatch.setattr(window, "ask_details", lambda *a: None)
    open_and_wait(window, str(path))
    assert window.workspace.loaded.format == "pickled_module"
    assert window.notices.kind == "info"  # no example input known: the user is told how


def test_crafted_pt2_asks_for_consent_and_runs_nothing_when_declined(
        qtbot, window: MainWindow, tmp_path: Path, monkeypatch, valid_model_files) -> None:
    from tests.core.crafted import pt2_with_pickled_weight

    marker = tmp_path / "code-ran.txt"
    path = pt2_with_pickled_weight(valid_model_files[".pt2"], tmp_path / "evil.pt2", marker)
    asked: list[Path] = []
    monkeypatch.setattr(window, "confirm_trust", lambda p: asked.append(p) or False)
    with qtbot.waitSignal(window.project.openFailed, timeout=30_000):
        window.project.open_path(str(path))
    assert asked == [path] and window.workspace is None and not marker.exists()


def test_a_project_naming_its_own_architecture_asks_and_its_jobs_get_the_consent(
        qtbot, window: MainWindow, tmp_path: Path, monkeypatch, open_and_wait,
        run_plan_and_wait, valid_model_files) -> None:
    from tests.core.crafted import project_naming_its_architecture

    marker = tmp_path / "code-ran.txt"
    manifest, architecture = project_naming_its_architecture(
        tmp_path / "project", valid_model_files[".pt"], marker, runnable=True)
    monkeypatch.syspath_prepend(str(manifest.parent))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(manifest.parent),
                                                      os.environ.get("PYTHONPATH", "")]))
    asked: list[tuple[str, Path]] = []
    monkeypatch.setattr(window, "confirm_architecture",
                        lambda arch, file: asked.append((arch, file)) or False)
    with qtbot.waitSignal(window.project.openFailed, timeout=30_000):
        window.project.open_path(str(manifest.parent))
    assert asked == [(architecture, manifest)] and window.workspace is None
    assert not marker.exists() and architecture in window.notices.text.text()

    monkeypatch.setattr(window, "confirm_architecture", lambda arch, file: True)
    open_and_wait(window, str(manifest.parent))
    assert window.workspace.architecture == architecture
    assert marker.read_text() == "imported\ncalled\n"
    assert run_plan_and_wait(window)["compressed"]["params"] > 0
    assert marker.read_text().startswith("imported\ncalled\nimported\ncalled\n")  # the child


def test_a_recipe_naming_its_own_architecture_asks_before_opening_its_model(
        qtbot, window: MainWindow, tmp_path: Path, monkeypatch, valid_model_files) -> None:
    from tests.core.crafted import project_naming_its_architecture

    marker = tmp_path / "code-ran.txt"
    manifest, architecture = project_naming_its_architecture(
        tmp_path / "shared", valid_model_files[".pt"], marker)
    recipe = manifest.rename(manifest.with_name("recipe.yaml"))
    monkeypatch.syspath_prepend(str(recipe.parent))
    answers = iter([False, True])
    asked: list[tuple[str, Path]] = []
    monkeypatch.setattr(window, "confirm_architecture",
                        lambda arch, file: asked.append((arch, file)) or next(answers))
    with qtbot.waitSignal(window.project.openFailed, timeout=30_000):
        window.project.import_recipe(recipe)
    assert asked == [(architecture, recipe)] and not marker.exists()
    with qtbot.waitSignal(window.workspaceOpened, timeout=30_000):
        window.project.import_recipe(recipe)
    assert window.workspace.architecture == architecture and len(asked) == 2
    assert marker.read_text() == "imported\ncalled\n"


def test_state_dict_asks_for_architecture_and_input(window: MainWindow, tmp_path: Path,
                                                    monkeypatch, open_and_wait) -> None:
    from studio.core.demo.model import build_demo_cnn
    from studio.qt.dialogs import ModelDetails

    path = tmp_path / "weights.safetensors"
    save_file(build_demo_cnn().state_dict(), str(path))
    asked = []

    def answer(*args):
        asked.append(args)
        from studio.core.models.inputs import InputSpec

        return ModelDetails("studio.core.demo.model:build_demo_cnn", InputSpec((2, 1, 28, 28)))

    monkeypatch.setattr(window, "ask_details", answer)
    open_and_wait(window, str(path))
    assert asked and asked[0][4] is True  # the architecture was asked for
    assert window.workspace.example.shape == (2, 1, 28, 28)
    assert window.workspace.tree.get("head.2").output_shape == (2, 10)


def test_drop_a_file_opens_it(qtbot, window: MainWindow, tmp_path: Path) -> None:
    from studio.core.models.loader import demo_path

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(demo_path()))])
    event = QDropEvent(QPoint(10, 10), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.workspaceOpened, timeout=120_000):
        window.dropEvent(event)
    assert window.workspace.tree.model_name == "demo-cnn"
    assert window.recent.paths() == [str(demo_path())]


def test_filter_box_filters_and_expands(qtbot, demo_window: MainWindow) -> None:
    win = demo_window
    qtbot.keyClicks(win.filter_edit, "batchnorm")
    root = win.proxy.index(0, 0)
    shown = set()
    stack = [root]
    while stack:
        index = stack.pop()
        shown.add(win.workspace.tree.nodes[win.proxy.data(index, NODE_ID_ROLE)].op_type)
        stack.extend(win.proxy.index(r, 0, index) for r in range(win.proxy.rowCount(index)))
    assert "BatchNorm2d" in shown and "Linear" not in shown and "MaxPool2d" not in shown
    assert win.view.isExpanded(win.proxy.index(0, 0, root))


def test_unsaved_edits_come_back_after_a_crash(demo_window: MainWindow, recovery_dir: Path,
                                               tmp_path: Path, make_window,
                                               open_and_wait) -> None:
    win = demo_window
    win.controller.set_field(["res"], "sparsity", 0.3)
    win.project.autosave_now()  # what the 2 s timer does after an edit
    plan = win.workspace.plan.copy()
    win.controller.undo_stack.setClean()  # the "crash": the window goes without saving

    other = make_window()
    open_and_wait(other, "demo")
    assert other.workspace.plan == plan
    assert other.session.dirty and "autosave" in other.notices.text.text()
    other.undo_action.trigger()  # the user can discard what was restored
    assert other.workspace.plan.specs == {}

    assert other.project.save_project_to(tmp_path / "project")  # saving removes the autosave
    assert not any(recovery_dir.glob("*.yaml"))
    other.controller.set_field(["stem.0"], "exclude", True)
    other.project.autosave_now()
    assert (tmp_path / "project" / "project.autosave.yaml").is_file()
    other.controller.undo_stack.setClean()

    third = make_window()
    open_and_wait(third, str(tmp_path / "project"))
    assert third.workspace.plan.spec("stem.0").exclude is True


def test_a_new_example_input_retraces_and_keeps_the_plan(qtbot, demo_window: MainWindow,
                                                         monkeypatch) -> None:
    win = demo_window
    win.controller.set_field(["res"], "sparsity", 0.5)
    monkeypatch.setattr(win, "ask_example_input", lambda current: "1x1x56x56")
    with qtbot.waitSignal(win.workspaceOpened, timeout=60_000):  # re-traced in the background
        win.project.choose_example_input()
    assert str(win.workspace.example) == "1,1,56,56"
    assert cell(win, "stem.0", 2) == "1×32×56×56"
    assert win.workspace.plan.spec("res").sparsity == 0.5
    monkeypatch.setattr(win, "ask_example_input", lambda current: "0x1")
    win.project.choose_example_input()
    assert win.notices.kind == "error" and "input shape [0, 1]" in win.notices.text.text()
