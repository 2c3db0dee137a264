"""The experiment history: saved as each experiment finishes, read back whatever happened."""

from __future__ import annotations

import json
from pathlib import Path

from studio.core.project.experiments import (
    EXPERIMENT_FILE,
    Experiment,
    artifact_path,
    experiment_dir,
    experiment_point,
    load_experiments,
    load_experiments_report,
    new_experiment,
    new_experiment_id,
    pareto_front,
    save_experiment,
)

PLAN = {"defaults": {"weight_bits": "int8"}, "layers": {"res.conv2": {"sparsity": 0.5}}}
REPORT = {"compressed": {"metric": {"name": "accuracy", "value": 0.97}, "onnx_bytes": 120_000,
                         "macs": 20_000_000,
                         "latency_ms": {"batch_1": 0.4, "batch_64": 9.5}}}


def test_round_trip_copies_artifacts(tmp_path: Path) -> None:
    model = tmp_path / "out" / "model.onnx"
    model.parent.mkdir()
    model.write_bytes(b"onnx bytes")
    experiment = new_experiment("int8 + 50%", PLAN, REPORT)
    folder = save_experiment(tmp_path / "project", experiment, {"onnx": model})
    assert folder == experiment_dir(tmp_path / "project", experiment.id)
    [loaded] = load_experiments(tmp_path / "project")
    assert loaded == experiment
    assert loaded.plan == PLAN and loaded.status == "finished"
    copied = artifact_path(tmp_path / "project", loaded, "onnx")
    assert copied is not None and copied.read_bytes() == b"onnx bytes"
    assert copied.parent == folder
    assert experiment_point(loaded) == {"metric": "accuracy", "value": 0.97,
                                        "higher_is_better": True, "onnx_bytes": 120_000.0,
                                        "macs": 20_000_000.0, "latency_ms": 9.5,
                                        "latency_batch": 64}


def test_corrupt_and_half_written_entries_are_skipped(tmp_path: Path) -> None:
    first = new_experiment("a", PLAN, REPORT)
    save_experiment(tmp_path, first)
    broken = new_experiment("b", PLAN, None, status="failed", error="out of memory")
    save_experiment(tmp_path, broken)
    (experiment_dir(tmp_path, broken.id) / EXPERIMENT_FILE).write_text('{"id": "x", "na')
    killed = experiment_dir(tmp_path, new_experiment_id())
    killed.mkdir(parents=True)
    (killed / "model.onnx").write_bytes(b"half")  # artifacts copied, manifest never written
    last = new_experiment("c", {}, None, status="cancelled")
    save_experiment(tmp_path, last)
    history = load_experiments_report(tmp_path)
    assert [e.name for e in history.experiments] == ["a", "c"]
    assert len(history.problems) == 1 and broken.id in history.problems[0]
    assert experiment_point(history.experiments[1])["value"] is None


def test_ids_sort_by_time_and_are_unique() -> None:
    ids = [new_experiment_id() for _ in range(50)]
    assert len(set(ids)) == 50
    assert [i[:22] for i in ids] == sorted(i[:22] for i in ids)


def test_unknown_fields_and_largest_batch() -> None:
    data = {"id": "1", "name": "n", "created": "2024-01-01T00:00:00+00:00", "extra": 1,
            "report": {"compressed": {"metric": {"value": 0.5},
                                      "latency_ms": {"batch_1": 1.0, "batch_32": 7.0}}}}
    experiment = Experiment.from_json(json.loads(json.dumps(data)))
    point = experiment_point(experiment)
    assert point["latency_ms"] == 7.0 and point["latency_batch"] == 32  # named on the axis


def test_pareto_front_minimises_x_and_maximises_y() -> None:
    points = [
        {"size": 10, "value": 0.90},   # 0: front (smallest)
        {"size": 20, "value": 0.95},   # 1: front
        {"size": 25, "value": 0.94},   # 2: dominated by 1
        {"size": 30, "value": 0.99},   # 3: front
        {"size": 40, "value": 0.99},   # 4: dominated by 3 (same y, larger x)
        {"size": 5, "value": None},    # 5: no value, left out
        {"size": 12, "value": 0.89},   # 6: dominated by 0
    ]
    assert pareto_front(points, "size") == [0, 1, 3]
    assert pareto_front([], "size") == []


def test_a_run_into_an_experiment_goes_through_staging_and_a_killed_one_leaves_no_entry(
        tmp_path: Path, quick_onnx_recipe) -> None:
    """The GUI's job runs into experiments/<id>; a killed run's staging folder there is no
    experiment, and the next run removes it."""
    from studio.core.engine.run import run_recipe_file
    from studio.core.jobs import CancelToken
    from studio.core.run_outputs import STAGING_PREFIX

    project = tmp_path / "project"
    project.mkdir()
    recipe = quick_onnx_recipe(project)
    stale = project / "experiments" / f"{STAGING_PREFIX}killed"
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"half")
    experiment = new_experiment("one", PLAN)
    out = experiment_dir(project, experiment.id)
    report = list(run_recipe_file(recipe, out, CancelToken()))[-1].report
    experiment.report = report
    save_experiment(project, experiment, {"onnx": Path(report["paths"]["model"])})
    assert not stale.exists()
    [loaded] = load_experiments(project)
    assert artifact_path(project, loaded, "onnx") == out / "model.onnx"
    assert {p.name for p in (project / "experiments").iterdir()} == {experiment.id}


def test_an_experiment_keeps_its_whole_recipe_and_old_ones_their_plan(tmp_path: Path) -> None:
    from studio.core.plan.recipe import parse_recipe
    from studio.core.plan.stages import DistillSection, QuantizeSection

    recipe = parse_recipe("schema_version: 1\nmodel: {path: demo}\n"
                          "plan: {defaults: {weight_bits: int8}}\n"
                          "distill: {temperature: 2.0, features: [{student: res, teacher: res}]}"
                          "\nquantize: {calibration: entropy, per_channel: false}\n")
    save_experiment(tmp_path, new_experiment("whole", recipe=recipe))
    [loaded] = load_experiments(tmp_path)
    plan, sections = loaded.settings()
    assert plan == recipe.to_plan()
    assert loaded.plan == {"defaults": {"weight_bits": "int8"}, "layers": {}}
    assert sections == {"distill": DistillSection(temperature=2.0, features=[
        {"student": "res", "teacher": "res"}]),
        "quantize": QuantizeSection(calibration="entropy", per_channel=False)}

    old = new_experiment("before recipes were kept", PLAN)
    data = old.to_json()
    del data["recipe"]  # as experiment.json files were written before
    folder = experiment_dir(tmp_path / "old", old.id)
    folder.mkdir(parents=True)
    (folder / EXPERIMENT_FILE).write_text(json.dumps(data))
    [loaded] = load_experiments(tmp_path / "old")
    plan, sections = loaded.settings()
    assert sections is None and plan.spec("res.conv2").sparsity == 0.5


def test_a_metric_keeps_its_name_and_direction() -> None:
    """Cosine and MSE are not stored as "accuracy"; for MSE the front keeps the lowest."""
    mse = new_experiment("m", PLAN, {"compressed": {"metric": {
        "name": "mse", "value": 0.02, "higher_is_better": False}, "onnx_bytes": 10}})
    point = experiment_point(mse)
    assert (point["metric"], point["value"], point["higher_is_better"]) == ("mse", 0.02, False)
    points = [{"size": 10, "value": 0.05}, {"size": 20, "value": 0.01},
              {"size": 30, "value": 0.03}]
    assert pareto_front(points, "size", higher_is_better=False) == [0, 1]
    assert pareto_front(points, "size") == [0]  # read as higher-better, 0 beats both
