"""Every setting a recipe holds can be set in the window, and what the window set round-trips
through a recipe file; per-layer distillation is set in the inspector, inherited, shown in the
tree and becomes the run's feature pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt

from studio.core.plan import FIELDS
from studio.core.plan.distill_pairs import plan_feature_pairs
from studio.core.plan.recipe import read_recipe
from studio.core.plan.schema import FieldForm, job_sections, section_fields
from studio.core.plan.stages import DataSection, FeaturePair, ImageOptions, TeacherSource
from studio.qt.columns import COLUMNS
from studio.qt.main_window import MainWindow
from tests.qt.test_main_window import cell, choose, select

PLAN_DISTILL = next(i for i, c in enumerate(COLUMNS) if c.title == "Plan: distill")


def _other_value(field: FieldForm) -> Any:
    """A valid value for the field that is not its default."""
    if field.kind == "bool":
        return not field.default
    if field.kind == "choice":
        return next(c for c in reversed(field.choices) if c != field.default)
    if field.kind == "int":
        return (field.default or 0) + 1
    if field.kind == "float":
        return field.default * 0.5 if field.default else 0.25
    if field.kind == "table" and field.model is TeacherSource:
        return [TeacherSource(path="original", weight=0.5)]
    if field.kind == "table":
        return [FeaturePair(student="res.conv2", teacher="res.conv2", weight=0.5)]
    if field.kind == "value":  # a list of layer names (self-distillation's layers)
        return ["res.conv2"]
    assert field.kind == "text", field
    return "auto"


def test_every_layer_field_and_run_setting_has_an_editor(demo_window: MainWindow) -> None:
    win = demo_window
    assert set(win.inspector.rows) == set(FIELDS)
    for key, model in job_sections().items():
        if key == "data":  # the Data tab has its own panel
            continue
        assert set(win.run_settings.forms[key].editors) == set(model.model_fields), key
    assert {"temperature", "alpha", "relation_weight", "features"} <= set(
        win.run_settings.forms["distill"].editors)
    assert {"epochs", "lr", "device"} <= set(win.run_settings.forms["train"].editors)


def test_window_settings_round_trip_through_a_recipe(qtbot, demo_window: MainWindow,
                                                    tmp_path: Path) -> None:
    win = demo_window
    select(win, "res.conv2")
    inspector = win.inspector
    inspector.sparsity.setValue(30.0)
    choose(inspector.granularity, "channels")
    choose(inspector.weight_bits, "int4")
    choose(inspector.act_bits, "int8")
    choose(inspector.distill_from, "block2.0")
    inspector.distill_weight.setValue(0.5)
    choose(inspector.group_size, 128)
    choose(inspector.adapter, "dora")
    inspector.adapter_rank.setValue(4)
    inspector.adapter_alpha.setValue(8.0)
    inspector.adapter_dropout.setValue(0.1)
    select(win, "head")
    inspector.exclude.click()
    expected = {}
    for key, form in win.run_settings.forms.items():
        values = {field.name: _other_value(field) for field in section_fields(form.model)}
        if key == "distill":  # augment and dkd (changed) apply to a teacher, the default mode
            values["mode"] = form.model.model_fields["mode"].default
        section = form.model.model_validate(values)
        win.run_settings.set_section(key, section)  # the form shows it...
        shown = win.run_settings.shown(key)  # ...and reads it back from its editors
        assert shown == section, key
        win.run_settings.edited.emit(key, shown)
        expected[key] = section
    path = tmp_path / "all.yaml"
    win.session.export_recipe(path)
    recipe = read_recipe(path)
    spec = recipe.to_plan().spec("res.conv2")
    assert (spec.sparsity, spec.granularity, spec.weight_bits, spec.act_bits,
            spec.distill_from, spec.distill_weight) == (0.3, "channels", "int4", "int8",
                                                          "block2.0", 0.5)
    assert (spec.group_size, spec.adapter, spec.adapter_rank, spec.adapter_alpha,
            spec.adapter_dropout) == (128, "dora", 4, 8.0, 0.1)
    assert recipe.to_plan().spec("head").exclude is True
    assert recipe.stages() == expected


def test_per_layer_distillation_is_inherited_shown_and_paired(demo_window: MainWindow
                                                              ) -> None:
    win = demo_window
    select(win, "res")
    choose(win.inspector.distill_from, "same")
    assert cell(win, "res.conv2", PLAN_DISTILL) == "← same layer"
    index = win.tree_model.index_of(win.workspace.tree.get("res.conv2").id, PLAN_DISTILL)
    assert win.tree_model.data(index, Qt.ItemDataRole.FontRole).italic()  # inherited
    select(win, "res.conv2")
    win.controller.set_field(["res.conv2"], "sparsity", 0.5)
    win.controller.set_field(["res.conv2"], "granularity", "channels")
    assert win.inspector.distill_check == (
        "1×32×14×14 → 1×64×14×14: a learned 1×1 convolution, 32 → 64 channels")
    assert win.inspector.distill_check in win.inspector.rows["distill_from"].hint.text()
    select(win, "stem.0")
    choose(win.inspector.distill_from, "head.2")  # a Linear's output: another rank
    assert "different ranks" in win.inspector.distill_check
    choose(win.inspector.distill_from, None)
    tree = win.workspace.tree
    pairs = plan_feature_pairs(tree, win.workspace.plan.resolve(tree))
    assert [(p.student, p.teacher) for p in pairs] == [
        ("res.conv1.0", "res.conv1.0"), ("res.conv2", "res.conv2")]


def _other_data_section() -> DataSection:
    """Every field of the data section away from its default (an image folder, so the image
    options are in play too)."""
    values: dict[str, Any] = {}
    for name, info in DataSection.model_fields.items():
        default = info.get_default(call_default_factory=True)
        values[name] = {
            "source": "images", "path": "/data/digits", "test_path": "/data/test",
            "inputs_key": "x", "constants": {"sr": 16000}, "labels_key": "y",
            "label_column": "label", "labelled": True, "metric": "top1_agreement",
            "image": ImageOptions(size=(32, 24), channels=1, mean=[0.5], std=[0.25]),
            "test_fraction": 0.3, "split_seed": 7, "calibration_samples": 64,
            "train_samples": 500, "validation_samples": 100, "max_samples": 900,
            "block_length": 64, "prompt": "Once", "generate_tokens": 5}[name]
        assert values[name] != default, name
    return DataSection.model_validate(values)


def test_every_data_setting_round_trips_through_the_data_tab_and_a_recipe(
        demo_window: MainWindow, tmp_path: Path) -> None:
    win = demo_window
    section = _other_data_section()
    panel = win.data_panel
    panel.set_section(section)
    assert set(panel.values()) == set(DataSection.model_fields)  # no field without an editor
    assert panel.section() == section  # the tab shows every field and reads it back
    win.data_panel.edited.emit(panel.section())
    path = tmp_path / "data.yaml"
    win.session.export_recipe(path)
    assert read_recipe(path).stages()["data"] == section
