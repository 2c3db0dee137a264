"""The Run settings tab driven through its real widgets: forms generated from the recipe's
sections (limits and help from the schema), edits that are validated inline, undoable, saved,
autosaved and exported, and runs from the window that carry every setting out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox

from studio.core.plan.recipe import read_recipe
from studio.core.plan.schema import job_sections, section_fields
from studio.core.plan.stages import DataSection, DistillSection, ExportSection, TrainSection
from studio.core.project.experiments import (
    EXPERIMENT_FILE,
    experiment_dir,
    load_experiments,
    new_experiment,
)
from studio.qt.main_window import MainWindow

DEMO_NPZ = Path(__file__).resolve().parents[2] / "resources" / "demo" / "mnist-5k.npz"


def widget(win: MainWindow, section: str, field: str):
    return win.run_settings.forms[section].editors[field].widget


def pick(combo: QComboBox, value: object) -> None:
    index = combo.findData(value)
    assert index >= 0, value
    combo.setCurrentIndex(index)


def add_feature_pair(win: MainWindow, student: str, teacher: str, weight: str) -> None:
    table = widget(win, "distill", "features")
    table.add_button.click()
    row = table.table.rowCount() - 1
    for column, text in enumerate((student, teacher, weight)):
        table.table.item(row, column).setText(text)


def test_forms_are_generated_from_the_schema(demo_window: MainWindow) -> None:
    panel = demo_window.run_settings
    assert panel.isEnabled() and "data" not in panel.forms  # data has its own tab
    kinds = {"bool": QCheckBox, "choice": QComboBox, "int": QSpinBox, "float": QDoubleSpinBox,
             "text": QLineEdit}
    for key, model in job_sections().items():
        if key == "data":
            continue
        for field in section_fields(model):
            shown = widget(demo_window, key, field.name)
            assert shown.toolTip() == field.help and field.help, (key, field.name)
            if field.kind in kinds:
                assert isinstance(shown, kinds[field.kind]), (key, field.name)
    opset = widget(demo_window, "export", "opset")
    assert (opset.minimum(), opset.maximum(), opset.value()) == (13, 23, 17)
    alpha = widget(demo_window, "distill", "alpha")
    assert (alpha.minimum(), alpha.maximum()) == (0.0, 1.0)
    assert widget(demo_window, "train", "lr").minimum() > 0  # gt=0: zero is refused
    assert panel.boxes["distill"].isCheckable() and not panel.boxes["distill"].isChecked()


def test_edits_are_validated_undoable_and_saved(qtbot, demo_window: MainWindow, tmp_path: Path,
                                               make_window, open_and_wait) -> None:
    win = demo_window
    device = widget(win, "train", "device")
    device.setText("gpu")
    assert win.run_settings.problem.startswith("device: 'gpu' is not accepted: cpu, auto")
    assert "border" in device.styleSheet()
    assert "train" not in win.workspace.stages  # never stored
    device.setText("cpu")
    assert win.run_settings.problem == "" and not device.styleSheet()

    epochs = widget(win, "train", "epochs")
    for value in (2, 3, 4):  # a held arrow key: one undo step
        epochs.setValue(value)
    assert win.workspace.stages["train"] == TrainSection(epochs=4)
    win.undo_action.trigger()
    assert "train" not in win.workspace.stages and epochs.value() == 1
    win.redo_action.trigger()
    assert epochs.value() == 4

    win.run_settings.boxes["distill"].setChecked(True)
    widget(win, "distill", "temperature").setValue(2.5)
    add_feature_pair(win, "res", "", "0.5")  # teacher still empty: refused, shown in red
    assert "features.0.teacher" in win.run_settings.problem
    assert win.workspace.stages["distill"].features == []
    widget(win, "distill", "features").table.item(0, 1).setText("res")
    expected = DistillSection(temperature=2.5, features=[
        {"student": "res", "teacher": "res", "weight": 0.5}])
    assert win.workspace.stages["distill"] == expected and win.session.dirty

    recipe = tmp_path / "settings.yaml"
    win.project.export_recipe(recipe)
    assert read_recipe(recipe).distill == expected
    assert win.project.save_project_to(tmp_path / "project")
    other = make_window()
    open_and_wait(other, str(tmp_path / "project"))
    assert other.run_settings.boxes["distill"].isChecked()
    assert widget(other, "distill", "temperature").value() == 2.5
    assert widget(other, "distill", "features").table.item(0, 1).text() == "res"
    assert widget(other, "train", "epochs").value() == 4

    win.run_settings.boxes["distill"].setChecked(False)  # off again: the section goes
    widget(win, "export", "opset").setValue(15)
    assert "distill" not in win.workspace.stages
    win.project.import_recipe(recipe)  # the whole recipe comes back, as one undo step
    assert win.workspace.stages["distill"] == expected and "export" not in win.workspace.stages
    assert win.run_settings.boxes["distill"].isChecked()
    assert widget(win, "export", "opset").value() == 17
    win.undo_action.trigger()
    assert widget(win, "export", "opset").value() == 15 and "distill" not in \
        win.workspace.stages


def test_unsaved_settings_come_back_after_a_crash(demo_window: MainWindow, make_window,
                                                   open_and_wait) -> None:
    win = demo_window
    pick(widget(win, "quantize", "calibration"), "entropy")
    win.project.autosave_now()
    win.controller.undo_stack.setClean()  # the "crash"
    other = make_window()
    open_and_wait(other, "demo")
    assert other.workspace.stages["quantize"].calibration == "entropy"
    assert widget(other, "quantize", "calibration").currentData() == "entropy"


def _weight_scales(path: Path) -> list[tuple[int, ...]]:
    """Shapes of the scales that dequantize the file's int8 weights (() when per tensor)."""
    model = onnx.load(str(path))
    initializers = {i.name: i for i in model.graph.initializer}
    return [tuple(numpy_helper.to_array(initializers[node.input[1]]).shape)
            for node in model.graph.node if node.op_type == "DequantizeLinear"
            and node.input[0] in initializers and node.input[1] in initializers
            and initializers[node.input[0]].data_type == onnx.TensorProto.INT8]


def _opset(path: Path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("",
                                                                                   "ai.onnx"))


def test_a_run_from_the_window_carries_every_setting(demo_window: MainWindow, tmp_path: Path,
                                                     run_plan_and_wait) -> None:
    win = demo_window
    with np.load(DEMO_NPZ) as digits:  # 320 labelled digits: 240 to train on, 80 to test
        np.savez(tmp_path / "digits.npz", x=digits["images"][:320], y=digits["labels"][:320])
    win.controller.set_stage("data", DataSection(source="arrays", path=str(
        tmp_path / "digits.npz"), test_fraction=0.25, calibration_samples=32))
    win.controller.set_field([""], "sparsity", 0.3)  # unstructured: AGP ramps it up
    win.controller.set_field([""], "weight_bits", "int8")
    win.controller.set_field([""], "act_bits", "int8")
    win.controller.set_field(["head"], "exclude", True)
    pick(widget(win, "prune", "schedule"), "agp")
    widget(win, "prune", "agp_steps").setValue(2)
    win.run_settings.boxes["distill"].setChecked(True)
    widget(win, "distill", "temperature").setValue(2.0)
    widget(win, "distill", "alpha").setValue(0.5)
    add_feature_pair(win, "res", "res", "0.25")
    widget(win, "quantize", "qat").setChecked(True)
    pick(widget(win, "quantize", "calibration"), "entropy")
    widget(win, "export", "opset").setValue(13)
    widget(win, "export", "latency_batch").setValue(8)
    widget(win, "export", "latency_repeats").setValue(2)
    assert win.project.save_project_to(tmp_path / "project")

    report = run_plan_and_wait(win)
    stages = report["stages"]
    assert stages["recover"]["kind"] == "distill"
    assert stages["recover"]["distill"]["temperature"] == 2.0
    assert stages["recover"]["distill"]["alpha"] == 0.5
    assert stages["recover"]["distill"]["features"] == [
        {"student": "res", "teacher": "res", "weight": 0.25}]
    assert stages["prune"]["unstructured"]["schedule"]["kind"] == "agp"
    assert stages["quantize"] == {"mode": "qat-static", "calibration": "entropy",
                                  "per_channel": True}
    assert set(report["compressed"]["latency_ms"]) == {"batch_1", "batch_8"}
    model = Path(report["paths"]["model"])
    assert _opset(model) == 13

    # post-training int8 instead: per tensor, percentile ranges, opset 15, no training
    win.run_settings.boxes["distill"].setChecked(False)
    widget(win, "quantize", "qat").setChecked(False)
    widget(win, "quantize", "per_channel").setChecked(False)
    pick(widget(win, "quantize", "calibration"), "percentile")
    pick(widget(win, "prune", "schedule"), "oneshot")
    widget(win, "train", "epochs").setValue(0)
    widget(win, "export", "opset").setValue(15)
    report = run_plan_and_wait(win)
    quantize = report["stages"]["quantize"]
    assert (quantize["mode"], quantize["calibration"], quantize["per_channel"]) == (
        "static", "percentile", False)
    model = Path(report["paths"]["model"])
    assert _opset(model) == 15
    scales = _weight_scales(model)
    assert scales and all(shape == () for shape in scales)  # one scale per tensor
    assert "recover" not in report["stages"]
    saved = read_recipe(tmp_path / "project" / "project.yaml")
    assert saved.export == ExportSection(opset=15, latency_batch=8, latency_repeats=2)

    first = load_experiments(tmp_path / "project")[0]
    win.pareto._on_points_clicked([first.id], Qt.KeyboardModifier.NoModifier)  # a click
    assert win.run_settings.boxes["distill"].isChecked()  # the whole recipe came back
    assert widget(win, "quantize", "qat").isChecked()
    assert widget(win, "export", "opset").value() == 13
    assert widget(win, "train", "epochs").value() == 1
    assert win.workspace.to_recipe().distill.features[0].weight == 0.25
    win.undo_action.trigger()  # one step
    assert widget(win, "export", "opset").value() == 15 and not \
        win.run_settings.boxes["distill"].isChecked()


def test_an_old_experiment_without_its_recipe_restores_its_plan(
        demo_window: MainWindow, tmp_path: Path, make_window, open_and_wait) -> None:
    win = demo_window
    assert win.project.save_project_to(tmp_path / "project")
    old = new_experiment("old", {"defaults": {"sparsity": 0.4}}, {"compressed": {
        "metric": {"name": "accuracy", "value": 0.9}, "onnx_bytes": 1000, "macs": 10}})
    data = old.to_json()
    del data["recipe"]  # written before experiments kept their recipe
    folder = experiment_dir(tmp_path / "project", old.id)
    folder.mkdir(parents=True)
    (folder / EXPERIMENT_FILE).write_text(json.dumps(data))
    other = make_window()
    open_and_wait(other, str(tmp_path / "project"))
    widget(other, "export", "opset").setValue(14)
    other.pareto._on_points_clicked([old.id], Qt.KeyboardModifier.NoModifier)
    assert other.workspace.plan.spec("").sparsity == 0.4
    assert widget(other, "export", "opset").value() == 14  # settings unknown: left alone


def test_every_section_survives_its_generated_form(qtbot) -> None:
    from studio.qt.schema_form import SchemaForm

    values = {"data": DataSection(source="arrays", path="x.npz", inputs_key=["a", "b"],
                                  test_fraction=0.3, train_samples=64),
              "distill": DistillSection(temperature=3.0, features=[
                  {"student": "res", "teacher": "res.conv1", "weight": 0.5}])}
    for key, model in job_sections().items():
        form = SchemaForm(model)
        qtbot.addWidget(form)
        form.set_value(None)
        assert form.value() == model(), key
        if key in values:
            form.set_value(values[key])
            assert form.value() == values[key], key


def test_a_new_section_shows_up_without_touching_the_window(qtbot, monkeypatch) -> None:
    from pydantic import BaseModel, Field

    from studio.qt import run_settings

    class SearchSection(BaseModel):
        """A search over plans (a section a later step could declare)."""

        trials: int = Field(default=20, ge=1, le=500, description="plans to try")

    sections = {**job_sections(), "search": SearchSection}
    monkeypatch.setattr(run_settings, "job_sections", lambda: sections)
    panel = run_settings.RunSettingsPanel(exclude=("data",))
    qtbot.addWidget(panel)
    trials = panel.forms["search"].editors["trials"].widget
    assert (trials.minimum(), trials.maximum(), trials.toolTip()) == (1, 500, "plans to try")
    edits = []
    panel.edited.connect(lambda key, value: edits.append((key, value)))
    trials.setValue(40)
    assert edits == [("search", SearchSection(trials=40))]
