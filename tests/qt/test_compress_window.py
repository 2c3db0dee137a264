"""Compression from the window: experiments run out of process, land in the project and on the
Pareto plot as they finish, survive reopening, and a killed job leaves the window usable.
Closing the window stops every job, even a child that ignores SIGTERM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from studio.core.plan.stages import ExportSection, TrainSection
from studio.core.project.experiments import load_experiments
from studio.qt.main_window import MainWindow


def _fast_settings(win: MainWindow) -> None:
    win.workspace.stages = {"train": TrainSection(epochs=0),
                            "export": ExportSection(latency_repeats=2, latency_batch=8)}


def _plan_training(win: MainWindow, tmp_path: Path, epochs: int) -> None:
    """A plan whose run trains (50% channels, then fine-tuning), in a saved project."""
    win.workspace.stages = {"train": TrainSection(epochs=epochs)}
    win.controller.set_field([""], "sparsity", 0.5)
    win.controller.set_field([""], "granularity", "channels")
    win.controller.set_field(["head"], "exclude", True)
    assert win.project.save_project_to(tmp_path / "project")


def test_two_experiments_make_points_and_a_front_and_come_back(
        qtbot, demo_window: MainWindow, tmp_path: Path, make_window, open_and_wait) -> None:
    win = demo_window
    _fast_settings(win)
    assert win.project.save_project_to(tmp_path / "project")
    win.controller.set_field([""], "weight_bits", "int8")
    win.controller.set_field([""], "act_bits", "int8")
    for _ in range(2):
        job = win.compress.run_plan()
        with qtbot.waitSignal(job.finished, timeout=600_000):
            pass
        win.controller.set_field(["res"], "weight_bits", "fp32")
    points = win.pareto.points()
    assert {p["id"] for p in points} >= {"baseline"} and len(points) == 3
    assert "baseline" in win.pareto.front_ids()
    saved = load_experiments(tmp_path / "project")
    assert [e.status for e in saved] == ["finished", "finished"]
    assert (tmp_path / "project" / "experiments" / saved[0].id / "model.onnx").is_file()

    win.pareto._on_points_clicked([saved[0].id], Qt.KeyboardModifier.NoModifier)  # a click
    assert win.workspace.plan.spec("").weight_bits == "int8"
    assert win.workspace.plan.spec("res").weight_bits is None

    other = make_window()
    open_and_wait(other, str(tmp_path / "project"))
    assert len(other.pareto.points()) == 3  # the history came back with the project


def test_a_killed_job_keeps_the_window_and_the_project(qtbot, demo_window: MainWindow,
                                                       tmp_path: Path) -> None:
    win = demo_window
    _plan_training(win, tmp_path, epochs=3)
    project_text = (tmp_path / "project" / "project.yaml").read_text()
    job = win.compress.run_plan()
    with qtbot.waitSignal(job.event, timeout=120_000):
        pass
    with qtbot.waitSignal(job.finished, timeout=600_000) as finished:
        job.process.kill()
    assert finished.args[0] == "failed"
    assert win.notices.kind == "error"
    assert (tmp_path / "project" / "project.yaml").read_text() == project_text
    assert [e.status for e in load_experiments(tmp_path / "project")] == ["failed"]
    win.controller.set_field(["stem.0"], "sparsity", 0.2)  # the window still works
    assert win.workspace.plan.spec("stem.0").sparsity == 0.2


def test_sensitivity_fills_the_heatmap_and_the_tree_then_allocates(
        qtbot, demo_window: MainWindow, tmp_path: Path, monkeypatch) -> None:
    from studio.core.engine.allocate import Target
    from studio.qt.columns import SENSITIVITY_COLUMN
    from studio.qt.plots.metric import metric_axis

    win = demo_window
    assert win.project.save_project_to(tmp_path / "project")
    timed: list[float] = []
    monkeypatch.setattr(win, "ask_sweep", lambda seconds: timed.append(seconds) and None)
    win.sensitivity_action.trigger()  # times one evaluation, then asks; "Cancel" runs nothing
    qtbot.waitUntil(lambda: bool(timed), timeout=120_000)
    assert timed[0] > 0 and win.jobs.model.rowCount() == 0
    job = win.compress.run_sensitivity("unstructured", subset=100)
    with qtbot.waitSignal(job.finished, timeout=600_000) as finished:
        pass
    assert finished.args[0] == "finished"
    report = win.compress.sensitivity
    values = win.heatmap.values()
    assert values.shape == (len(report.layers), len(report.sparsity.levels))
    assert (tmp_path / "project" / "sensitivity.json").is_file()
    cell = win.tree_model.index_of(win.workspace.tree.get("res.conv2").id, SENSITIVITY_COLUMN)
    assert win.tree_model.data(cell).endswith("pt")

    win.controller.set_field(["stem.0"], "exclude", True)  # set by the user: pinned
    asked: list[str] = []
    monkeypatch.setattr(win, "ask_target",
                        lambda label: asked.append(label) or Target("size", 0.4))
    win.allocate_action.trigger()  # Compress ▸ Allocate to Target asks the window
    assert asked == [metric_axis(report.metric).label]  # named as the sweep measured it
    assert win.workspace.plan.spec("stem.0").exclude is True
    assert any(spec.weight_bits or spec.sparsity for name, spec
               in win.workspace.plan.specs.items() if name != "stem.0")
    win.undo_action.trigger()  # the proposal is one undoable edit
    assert set(win.workspace.plan.specs) == {"stem.0"}


def test_export_plot_writes_the_chosen_file_or_names_the_failure(
        demo_window: MainWindow, tmp_path: Path, monkeypatch) -> None:
    win = demo_window
    answers = [str(tmp_path / "pareto"), str(tmp_path / "pareto.csv"),
               str(tmp_path / "missing" / "pareto.csv")]
    monkeypatch.setattr(win, "ask_path", lambda kind, caption, file_filter="": answers.pop(0))
    win.export_plot_action.trigger()  # no extension: a PNG
    assert (tmp_path / "pareto.png").stat().st_size > 0
    win.export_plot_action.trigger()
    assert (tmp_path / "pareto.csv").read_text(encoding="utf-8").startswith("id,")
    win.export_plot_action.trigger()
    assert win.notices.kind == "error" and "cannot write" in win.notices.text.text()


def test_closing_while_a_job_runs_asks_then_stops_it(qtbot, demo_window: MainWindow,
                                                     tmp_path: Path, monkeypatch) -> None:
    win = demo_window
    _plan_training(win, tmp_path, epochs=5)
    job = win.compress.run_plan()
    with qtbot.waitSignal(job.event, timeout=120_000):
        pass
    answers = [False, True]
    monkeypatch.setattr(win, "ask_stop_jobs", lambda: answers.pop(0))
    win.close()
    assert win.isVisible() and job.running  # "Cancel": nothing stops
    win.close()
    assert not win.isVisible() and job.done and job.status == "cancelled"
    assert job.process.state() == job.process.ProcessState.NotRunning


def test_closing_kills_a_job_that_ignores_sigterm(qtbot, window: MainWindow,
                                                  sigterm_ignoring_job) -> None:
    job = sigterm_ignoring_job()
    with qtbot.waitSignal(job.event, timeout=120_000):  # its first line: SIGTERM is ignored
        window.jobs.submit("stubborn", job)
    pid = job.process.processId()
    window.close()  # asks (answered "stop" by the fixture), then stops every job
    assert not window.isVisible()
    assert job.done and job.status == "cancelled"
    assert job.process.exitStatus() == job.process.ExitStatus.CrashExit  # it had to be killed
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert window.jobs.model.index(0, 1).data() == "cancelled"


def test_an_onnx_model_runs_and_training_says_it_needs_torch(
        window: MainWindow, open_and_wait, run_plan_and_wait, demo_onnx_path: Path,
        tmp_path: Path) -> None:
    win = window
    open_and_wait(win, str(demo_onnx_path))
    _fast_settings(win)
    del win.workspace.stages["train"]  # no fine-tuning: the ONNX file is pruned as it is
    win.controller.set_field([""], "sparsity", 0.3)
    assert win.project.save_project_to(tmp_path / "project")
    run_plan_and_wait(win)
    assert len(win.pareto.points()) == 2

    win.workspace.stages["train"] = TrainSection(epochs=1)
    assert win.compress.run_plan() is None  # refused at once: no job, no failed experiment
    assert win.notices.kind == "error" and win.jobs.model.rowCount() == 1
    assert "ONNX file" in win.notices.text.text() and "train.epochs: 1" in \
        win.notices.text.text()
