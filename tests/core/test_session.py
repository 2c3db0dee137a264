"""The Qt-free session: opening, dirty flag, autosave, saving, recipes, experiment history and
sensitivity results, observed through its events as the window's adapter observes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio.core.errors import StudioError
from studio.core.plan.recipe import read_recipe
from studio.core.plan.stages import ExportSection, QuantizeSection
from studio.core.project.experiments import new_experiment
from studio.core.project.session import Session, is_project, open_target
from studio.core.project.studies import SENSITIVITY_FILE
from studio.core.reports.sensitivity_report import SensitivityReport

SWEEP_V0 = Path(__file__).parent / "fixtures" / "sensitivity_v0.json"
"""A sweep as main wrote it before the report was typed (no schema_version)."""
REPORT = {"compressed": {"metric": {"name": "accuracy", "value": 0.9}, "onnx_bytes": 1000}}


def _watched(tmp_path: Path) -> tuple[Session, list[str]]:
    session = Session(tmp_path / "recovery")
    events: list[str] = []
    session.subscribe(lambda event, _payload: events.append(event))
    return session, events


def test_open_edit_autosave_save_and_reopen(tmp_path: Path) -> None:
    session, events = _watched(tmp_path)
    assert session.install(open_target("demo")) == []
    assert events == ["opened", "history"] and not session.dirty
    session.workspace.stages["quantize"] = QuantizeSection(calibration="entropy")
    session.set_dirty(True)
    session.autosave()  # a model not saved as a project yet: the recovery folder
    assert len(list((tmp_path / "recovery").glob("*.yaml"))) == 1

    again = Session(tmp_path / "recovery")
    again.install(open_target("demo"))
    assert again.pending_autosave().quantize == QuantizeSection(calibration="entropy")

    with pytest.raises(StudioError, match="Save As"):
        session.save()  # no folder yet
    manifest = session.save(tmp_path / "project")
    assert events[-3:] == ["dirty", "history", "saved"] and not session.dirty
    assert is_project(tmp_path / "project") and manifest.parent == session.project_dir
    assert not list((tmp_path / "recovery").glob("*.yaml"))  # saving removes the autosave
    assert again.pending_autosave() is None

    recipe = tmp_path / "out.yaml"
    session.export_recipe(recipe)
    assert read_recipe(recipe).quantize.calibration == "entropy"
    spec = session.job_spec("run", tmp_path / "job", {"trust": False}, None)
    assert spec["base_dir"] == str(tmp_path / "project")
    assert spec["recipe"]["quantize"]["calibration"] == "entropy"


def test_experiments_and_sensitivity_are_kept_by_the_core(tmp_path: Path) -> None:
    session, events = _watched(tmp_path)
    session.install(open_target("demo"))
    with pytest.raises(StudioError, match="project"):
        session.record_experiment(new_experiment("a", {}, REPORT))
    session.save(tmp_path / "project")
    session.workspace.stages["export"] = ExportSection(opset=13)
    experiment = new_experiment("a", report=REPORT, recipe=session.job_recipe())
    session.record_experiment(experiment)
    session.record_experiment(new_experiment("b", {}, None, status="failed", error="boom"))
    assert list(session.experiments) == [experiment.id] and events[-1] == "experiment"
    sweep = SensitivityReport.from_json(json.loads(SWEEP_V0.read_text()))
    session.set_sensitivity(sweep)
    assert events[-1] == "sensitivity"
    assert (tmp_path / "project" / SENSITIVITY_FILE).is_file()

    other = Session(tmp_path / "recovery")
    assert other.install(open_target(str(tmp_path / "project"))) == []
    assert other.sensitivity == sweep
    [restored] = other.experiments.values()
    assert restored.settings()[1] == {"export": ExportSection(opset=13)}

    (tmp_path / "project" / SENSITIVITY_FILE).write_text("{not json")
    problems = Session(tmp_path / "recovery").install(open_target(str(tmp_path / "project")))
    assert len(problems) == 1 and SENSITIVITY_FILE in problems[0]  # named, not raised
