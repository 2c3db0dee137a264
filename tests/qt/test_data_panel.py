"""The Data tab driven through its real widgets: a section that is validated inline, undoable,
saved with the project and exported in recipes; "Check data" loading real files; consent before
a data function runs; a compress run scored by agreement on unlabelled data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
from PySide6.QtGui import QDropEvent

from studio.core.plan.recipe import read_recipe
from studio.core.plan.stages import DataSection, ExportSection, ImageOptions, TrainSection
from studio.qt.main_window import MainWindow
from tests.core.data.conftest import GB, write_bomb

DEMO_NPZ = Path(__file__).resolve().parents[2] / "resources" / "demo" / "mnist-5k.npz"


def _image_folder(root: Path, per_class: int = 4) -> Path:
    """Two classes of tiny RGB PNGs (dark and bright), 12×10 so a resize is visible."""
    for number, name in enumerate(("dark", "bright")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((10, 12, 3), 40 + 160 * number + i, dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _pick(win: MainWindow, monkeypatch, answer: str) -> list[tuple[str, str]]:
    """Answer the window's file/folder dialogs with ``answer``; returns what was asked."""
    asked: list[tuple[str, str]] = []

    def ask(kind: str, caption: str, file_filter: str = "") -> str:
        asked.append((kind, caption))
        return answer

    monkeypatch.setattr(win, "ask_path", ask)
    return asked


def _fill_image_form(win: MainWindow, monkeypatch, folder: Path) -> list[tuple[str, str]]:
    panel = win.data_panel
    panel.source.setCurrentIndex(panel.source.findData("images"))
    asked = _pick(win, monkeypatch, str(folder))
    panel.path_row.browse.click()
    panel.resize_box.setChecked(True)
    panel.height.setValue(28)
    panel.width.setValue(28)
    panel.channels.setCurrentIndex(panel.channels.findData(1))
    panel.mean.setText("0.5")
    panel.std.setText("0.25")
    panel.test_fraction.setValue(25)
    panel.calibration.setValue(4)
    return asked


def _check(qtbot, win: MainWindow) -> str:
    win.data_panel.check_button.click()
    # the check starts a child process (torch import): minutes on a loaded machine
    qtbot.waitUntil(lambda: win.data_panel.check_button.isEnabled(), timeout=180_000)
    return win.data_panel.check_text


def test_image_folder_is_saved_restored_exported_and_undoable(
        qtbot, demo_window: MainWindow, tmp_path: Path, monkeypatch, make_window,
        open_and_wait) -> None:
    win = demo_window
    folder = _image_folder(tmp_path / "pictures")
    asked = _fill_image_form(win, monkeypatch, folder)
    assert asked == [("folder", "Data: image folder")]  # a folder dialog, not a file dialog
    expected = DataSection(source="images", path=str(folder), test_fraction=0.25,
                           calibration_samples=4,
                           image=ImageOptions(size=(28, 28), channels=1, mean=[0.5], std=[0.25]))
    assert win.workspace.stages["data"] == expected
    assert win.data_panel.problem == "" and win.session.dirty

    win.undo_action.trigger()  # one step per field: the calibration count goes back
    assert win.workspace.stages["data"].calibration_samples == 256
    assert win.data_panel.calibration.value() == 256
    win.redo_action.trigger()
    assert win.workspace.stages["data"] == expected

    assert win.project.save_project_to(tmp_path / "project")
    saved = read_recipe(tmp_path / "project" / "project.yaml")
    assert saved.data == expected
    win.project.export_recipe(tmp_path / "recipe.yaml")
    assert read_recipe(tmp_path / "recipe.yaml").data == expected

    other = make_window()
    open_and_wait(other, str(tmp_path / "project"))
    assert other.data_panel.section() == expected
    assert other.data_panel.channels.currentData() == 1 and other.data_panel.mean.text() == "0.5"

    text = _check(qtbot, other)  # a real load_task in a worker thread
    assert "calibration" in text and "<b>4</b>" in text  # 4 calibration images
    assert "<b>2</b>" in text  # 25% of 8 images held out for the test split
    assert "2 classes" in text and "accuracy" in text
    assert "1×28×28" in text and "fits the model" in text


def test_a_shape_that_does_not_fit_the_model_is_shown(qtbot, demo_window: MainWindow,
                                                      tmp_path: Path, monkeypatch) -> None:
    win = demo_window
    _fill_image_form(win, monkeypatch, _image_folder(tmp_path / "pictures"))
    win.data_panel.channels.setCurrentIndex(win.data_panel.channels.findData(3))
    text = _check(qtbot, win)
    assert "Does not fit the model" in text and "3, 28, 28" in text and "[1, 1, 28, 28]" in text


def test_invalid_values_are_named_inline_and_not_stored(demo_window: MainWindow) -> None:
    win = demo_window
    panel = win.data_panel
    panel.source.setCurrentIndex(panel.source.findData("arrays"))
    assert "path" in panel.problem and "file or folder" in panel.problem
    assert "data" not in win.workspace.stages  # nothing invalid reaches the workspace
    assert panel.path.styleSheet()  # the field is outlined
    assert not win.notices.isVisible() or win.notices.kind != "error"  # no modal, no notice

    panel.source.setCurrentIndex(panel.source.findData("images"))
    panel.path.setText("/somewhere")
    panel.mean.setText("half, half")
    assert panel.problem.startswith("image.mean:") and "numbers separated by commas" in \
        panel.problem
    panel.mean.setText("0.5")
    assert panel.problem == ""
    assert win.workspace.stages["data"].image.mean == [0.5]

    panel.constants.setText("sr: [1, [2]]")
    assert panel.problem.startswith("constants: sr: give a number or a nested list of numbers")
    assert panel.constants.styleSheet()
    panel.constants.setText("sr: 16000")
    assert panel.problem == "" and win.workspace.stages["data"].constants == {"sr": 16000}


def test_every_field_survives_the_form(qtbot) -> None:
    """Each schema field has a widget: a section shown and read back is the same section."""
    from studio.qt.data_panel import DataPanel

    panel = DataPanel()
    qtbot.addWidget(panel)
    sections = [
        DataSection(source="images", path="p", test_path="t", labelled=False, metric="mse",
                    image=ImageOptions(size=(32, 24), channels=3, mean=[0.1, 0.2, 0.3],
                                       std=[0.5, 0.5, 0.5]),
                    test_fraction=0.3, split_seed=7, calibration_samples=99, train_samples=500),
        DataSection(source="arrays", path="a.npz", inputs_key="x", labels_key="y",
                    labelled=True, metric="top1_agreement"),
        DataSection(source="arrays", path="v.npz", inputs_key=["input", "state"],
                    constants={"sr": 16000, "window": [[0.5, 1], [2, 3]]}),
        DataSection(source="csv", path="t.csv", label_column="class", metric="accuracy"),
        DataSection(source="function", path="pkg.mod:fn", max_samples=1234, metric="cosine"),
        DataSection(source="text", path="corpus", block_length=64, prompt="Once upon",
                    generate_tokens=7, max_samples=300, metric="perplexity"),
    ]
    for section in sections:
        panel.set_section(section)
        assert panel.section() == section
    panel.set_section(None)
    assert panel.section() is None  # the defaults: nothing is written to the recipe


LOADER = """
import os, pathlib, numpy as np
pathlib.Path(__file__).with_name("imported-by").write_text(str(os.getpid()))

def batches():
    rng = np.random.default_rng(0)
    for _ in range(3):
        yield rng.random((10, CHANNELS, 28, 28), dtype=np.float32)
"""


def _function_project(win: MainWindow, folder: Path, channels: int) -> Path:
    """The window's model saved as a project in ``folder`` whose data is ``loader:batches``, a
    loader.py beside it giving samples of ``channels`` channels."""
    panel = win.data_panel
    panel.source.setCurrentIndex(panel.source.findData("function"))
    panel.path.setText("loader:batches")
    assert win.project.save_project_to(folder)
    (folder / "loader.py").write_text(LOADER.replace("CHANNELS", str(channels)))
    return (folder / "loader.py").resolve()


def _answer(win: MainWindow, monkeypatch, answers: list[bool]) -> list[tuple[str, str]]:
    """Answer the consent question from ``answers``; returns what was asked."""
    asked: list[tuple[str, str]] = []

    def confirm(function: str, file: str) -> bool:
        asked.append((function, file))
        return answers.pop(0)

    monkeypatch.setattr(win, "confirm_function", confirm)
    return asked


def test_a_function_source_asks_consent_first(qtbot, demo_window: MainWindow, tmp_path: Path,
                                              monkeypatch) -> None:
    win = demo_window
    loader = _function_project(win, tmp_path / "project", 1)
    marker = loader.with_name("imported-by")
    answers = [False]
    asked = _answer(win, monkeypatch, answers)
    win.data_panel.check_button.click()
    assert asked == [("loader:batches", str(loader))]  # the file is named, not only the function
    assert "consent" in win.data_panel.check_text
    assert not marker.exists()  # refused: nothing imported

    answers.append(False)
    assert win.compress.run_plan() is None  # refused again: no job starts
    assert len(asked) == 2 and win.jobs.model.rowCount() == 0
    assert win.notices.kind == "info" and "needs your consent" in win.notices.text.text()

    answers.append(True)
    text = _check(qtbot, win)
    assert "no: scored by agreement" in text and "cosine" in text and "1×28×28" in text
    assert int(marker.read_text()) != os.getpid()  # it ran in a child process, not the window
    # the window never imported this project's loader (other tests may have a "loader" of theirs)
    assert all(getattr(module, "__file__", None) != str(loader)
               for module in list(sys.modules.values()))
    job = win.compress.run_plan()  # allowed: the job may run the function too, unasked
    # the consent travels as the allowed code alone: it does not make the model file trusted
    assert job.spec["trust"] is False and len(asked) == 3
    assert job.spec["data_consent"][0]["files"][0][0] == str(loader)
    with qtbot.waitSignal(job.finished, timeout=120_000):
        job.cancel()


def test_consent_for_one_project_does_not_cover_another(qtbot, demo_window: MainWindow,
                                                        tmp_path: Path, monkeypatch,
                                                        open_and_wait) -> None:
    """Allowing loader:batches in project A does not allow project B's loader.py, nor A's once
    it changed; each project's check shows its own data."""
    win = demo_window
    loader_a = _function_project(win, tmp_path / "a", 1)
    loader_b = _function_project(win, tmp_path / "b", 3)
    asked = _answer(win, monkeypatch, [True, True, True])
    open_and_wait(win, str(tmp_path / "a"))
    assert "1×28×28" in _check(qtbot, win) and asked == [("loader:batches", str(loader_a))]

    open_and_wait(win, str(tmp_path / "b"))
    text = _check(qtbot, win)
    assert asked[1:] == [("loader:batches", str(loader_b))]  # asked again, naming B's file
    assert "3×28×28" in text and "Does not fit the model" in text  # B's data, not A's

    open_and_wait(win, str(tmp_path / "a"))
    assert win.data.job_consent() is not None and len(asked) == 2  # A is still allowed
    loader_a.write_text(loader_a.read_text() + "# edited\n")
    assert win.data.job_consent() is not None
    assert asked[2:] == [("loader:batches", str(loader_a))]  # changed: asked again


def test_a_loader_that_kills_its_process_leaves_the_window_up(
        qtbot, demo_window: MainWindow, tmp_path: Path, monkeypatch) -> None:
    """Check Data runs the user's loader in a child process: a crash there is one line."""
    win = demo_window
    loader = _function_project(win, tmp_path / "project", 1)
    loader.write_text("import os, signal\n\ndef batches():\n"
                      "    os.kill(os.getpid(), signal.SIGKILL)\n    yield []\n")
    _answer(win, monkeypatch, [True])
    text = _check(qtbot, win)
    assert "ended unexpectedly (killed or crashed)" in text and win.isVisible()
    assert win.workspace is not None and win.data_panel.check_button.isEnabled()


def test_a_decompression_bomb_is_refused_by_check_data(qtbot, demo_window: MainWindow,
                                                      tmp_path: Path) -> None:
    """A 10 MB .npz declaring 10 GB: Check Data (in its child process) names the bomb and the
    window stays usable."""
    digits = np.load(DEMO_NPZ)["images"][:40]
    write_bomb(tmp_path / "bomb.npz", {"x": digits}, "junk", 10 * GB - (10 * GB) % (1 << 24))
    panel = demo_window.data_panel
    panel.source.setCurrentIndex(panel.source.findData("arrays"))
    panel.path.setText(str(tmp_path / "bomb.npz"))
    panel.calibration.setValue(4)
    assert "fits the model's input" in _check(qtbot, demo_window)  # the unused 10 GB: unread
    panel.inputs_key.setText("junk")
    text = _check(qtbot, demo_window)
    assert "decompression bomb" in text and "10.0 GB" in text


def test_unlabelled_arrays_run_scores_agreement(demo_window: MainWindow, run_plan_and_wait,
                                                tmp_path: Path, monkeypatch) -> None:
    digits = np.load(DEMO_NPZ)["images"][:160]
    np.savez(tmp_path / "digits.npz", x=digits)  # inputs only: no labels
    win = demo_window
    _pick(win, monkeypatch, str(tmp_path / "digits.npz"))
    panel = win.data_panel
    panel.source.setCurrentIndex(panel.source.findData("arrays"))
    panel.path_row.browse.click()
    panel.calibration.setValue(16)
    assert win.workspace.stages["data"].path == str(tmp_path / "digits.npz")
    win.workspace.stages |= {"train": TrainSection(epochs=0),
                             "export": ExportSection(latency_repeats=2, latency_batch=8)}
    win.controller.set_field([""], "sparsity", 0.3)
    assert win.project.save_project_to(tmp_path / "project")
    report = run_plan_and_wait(win)
    assert report["data"]["labelled"] is False
    points = win.pareto.points()
    assert {p["metric"] for p in points} == {"cosine"}
    assert win.pareto.metric.title == "Cosine agreement"
    assert win.pareto.plot_item.getAxis("left").labelText == "Cosine agreement"
    compressed = next(p for p in points if p["id"] != "baseline")
    assert 0.5 < compressed["value"] <= 1.0  # cosine of the outputs, not a class accuracy
    assert "cosine agreement" in win.pareto._tip(0, 0, compressed["id"])


def test_a_hugging_face_folder_opens_with_roles(qtbot, window: MainWindow, tmp_path: Path,
                                                monkeypatch, qtmodeltester) -> None:
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=24,
                                     max_position_embeddings=32)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    _pick(window, monkeypatch, str(tmp_path / "bert"))
    with qtbot.waitSignal(window.workspaceOpened, timeout=120_000):
        window.open_folder_action.trigger()

    tree = window.workspace.tree
    attention = next(node for node in tree.nodes if node.role == "attention")
    index = window.tree_model.index_of(attention.id, 1)
    assert window.tree_model.data(index) == attention.type_label == \
        f"{attention.op_type} · attention"
    assert {node.role for node in tree.nodes} >= {"embeddings", "encoder block", "attention",
                                                   "FFN"}
    window.proxy.set_filter_text("FFN")  # roles are searchable
    assert window.proxy.rowCount() == 1
    qtmodeltester.check(window.tree_model)

    # token ids of another length than the example input still fit: the check runs the model
    ids = np.random.default_rng(0).integers(1, 64, (20, 12))
    np.savez(tmp_path / "ids.npz", input_ids=ids)
    window.data_panel.source.setCurrentIndex(window.data_panel.source.findData("arrays"))
    window.data_panel.path.setText(str(tmp_path / "ids.npz"))
    assert window.workspace.example.shape[1] != 12
    assert "fits the model's input" in _check(qtbot, window)


def test_a_dropped_folder_without_a_model_gives_a_notice(qtbot, window: MainWindow,
                                                         tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path / "empty"))])
    event = QDropEvent(QPoint(10, 10), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.project.openFailed, timeout=120_000):
        window.dropEvent(event)  # a folder goes the same way as a file, not as a project
    assert window.notices.kind == "error" and "empty" in window.notices.text.text()
    assert "project.yaml" not in window.notices.text.text()
    assert window.workspace is None


def test_sensitivity_times_the_task_data_and_names_a_missing_file(
        qtbot, demo_window: MainWindow, tmp_path: Path) -> None:
    win = demo_window
    win.data_panel.source.setCurrentIndex(win.data_panel.source.findData("arrays"))
    win.data_panel.path.setText(str(tmp_path / "missing.npz"))
    win.compress.choose_sensitivity()  # times one evaluation on the data, in the background
    qtbot.waitUntil(lambda: not win.busy_working, timeout=120_000)
    assert win.notices.kind == "error" and "missing.npz" in win.notices.text.text()


def test_unsaved_data_edits_come_back_after_a_crash(demo_window: MainWindow, make_window,
                                                    open_and_wait) -> None:
    win = demo_window
    win.data_panel.metric.setCurrentIndex(win.data_panel.metric.findData("top1_agreement"))
    win.data_panel.calibration.setValue(32)
    win.project.autosave_now()
    section = win.workspace.stages["data"]
    win.controller.undo_stack.setClean()  # the "crash"

    other = make_window()
    open_and_wait(other, "demo")
    assert other.workspace.stages["data"] == section
    assert other.data_panel.section() == section
    other.undo_action.trigger()  # one undo discards everything restored
    assert "data" not in other.workspace.stages and other.data_panel.section() is None


def test_check_data_shows_each_named_input_of_a_multi_input_onnx_file(
        qtbot, window: MainWindow, tmp_path: Path, open_and_wait) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["sr"], ["rate"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["input", "rate"], ["scaled"]),
         helper.make_node("Add", ["scaled", "state"], ["out"])], "vad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "vad.onnx"))
    np.savez(tmp_path / "frames.npz", input=np.ones((10, 4), np.float32),
             state=np.zeros((10, 3), np.float32))
    open_and_wait(window, str(tmp_path / "vad.onnx"))
    panel = window.data_panel
    panel.source.setCurrentIndex(panel.source.findData("arrays"))
    panel.path.setText(str(tmp_path / "frames.npz"))
    panel.inputs_key.setText("input, state")
    panel.constants.setText("sr: 16000")
    assert window.workspace.stages["data"].inputs_key == ["input", "state"]
    text = _check(qtbot, window)
    assert "sample input" in text and "sample state" in text and "constant sr" in text
    assert "Does not fit the model" in text and "its input &#x27;state&#x27; has shape " \
        "[batch, 4]" in text and "samples of shape [3]" in text

    np.savez(tmp_path / "frames.npz", input=np.ones((10, 4), np.float32),
             state=np.zeros((10, 4), np.float32))
    text = _check(qtbot, window)
    assert "fits the model" in text and "Does not fit" not in text


def test_check_data_settles_auto_from_the_models_output(qtbot, window: MainWindow,
                                                        tmp_path: Path, open_and_wait) -> None:
    """One value per sample ([batch, 1]): auto reads MSE, as a run would, and cosine asked for
    is named as not fitting."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input"], ["speech"], keepdims=1)], "vad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("speech", TensorProto.FLOAT, ["batch", 1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "vad.onnx"))
    np.savez(tmp_path / "frames.npz", x=np.ones((10, 4), np.float32))
    open_and_wait(window, str(tmp_path / "vad.onnx"))
    panel = window.data_panel
    panel.source.setCurrentIndex(panel.source.findData("arrays"))
    panel.path.setText(str(tmp_path / "frames.npz"))
    text = _check(qtbot, window)
    assert "mse vs original (auto: unlabelled data, and output &#x27;speech&#x27; [N, 1]" in text
    assert "fits the model" in text

    panel.metric.setCurrentIndex(panel.metric.findData("cosine"))
    text = _check(qtbot, window)
    assert "Does not fit the model: data: metric cosine compares" in text


def test_check_data_without_the_models_output_leaves_auto_open(tmp_path: Path) -> None:
    from studio.core.engine.data_check import data_check_job
    from studio.core.jobs import CancelToken, Result
    from studio.core.plan.recipe import Recipe
    from studio.qt.data_controller import describe_check

    np.savez(tmp_path / "x.npz", x=np.ones((10, 4), np.float32))
    recipe = Recipe.model_validate({"schema_version": 1,
                                    "data": {"source": "arrays", "path": "x.npz"}})
    result = list(data_check_job(recipe, tmp_path, tmp_path / "out", CancelToken()))[-1]
    assert isinstance(result, Result) and result.report["metric"] == "auto"
    assert "auto (chosen from the model&#x27;s output when it runs)" in describe_check(
        result.report)
