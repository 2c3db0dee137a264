"""Jobs in the GUI: real jobs in a child process or a thread finish, fail readably and cancel fast,
and the jobs panel shows them. A child that ignores SIGTERM is killed, by cancel and by shutdown.

Waits are on signals and conditions; their timeouts only bound a hang (a loaded machine may be
ten times slower), and no test asserts on elapsed time.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

from studio.core.engine.run import REPORT_FILE
from studio.core.errors import StudioError
from studio.core.jobs import CancelToken, Event, Log, Metric, Progress
from studio.core.plan.recipe import parse_recipe, read_recipe
from studio.core.plan.stages import ExportSection
from studio.core.resources import resource_path
from studio.qt.jobs import (
    CANCELLED,
    FAILED,
    FINISHED,
    JobHandle,
    JobsModel,
    JobsPanel,
    ProcessJob,
    ThreadJob,
)
from studio.qt.jobs.model import ELAPSED, LEFT, NAME, PROGRESS, STATUS, FractionRole


@pytest.fixture
def training(training_recipe: str) -> str:
    """The shared training recipe, run for long enough to be cancelled mid-way."""
    return training_recipe.replace("epochs: 1", "epochs: 3")


def _spec(recipe: Any, out_dir: Path, base_dir: Path | None = None) -> dict[str, Any]:
    return {"kind": "run", "recipe": recipe.model_dump(mode="json"),
            "base_dir": str(base_dir) if base_dir else None, "out_dir": str(out_dir),
            "device": "cpu", "options": {}}


def _int8_spec(out_dir: Path) -> dict[str, Any]:
    path = resource_path("recipes", "demo-int8.yaml")
    recipe = read_recipe(path)
    recipe = recipe.model_copy(update={"export": ExportSection(latency_repeats=2)})
    return _spec(recipe, out_dir, path.parent)


class Recorder:
    """Collects a handle's events and its one end."""

    def __init__(self, handle: JobHandle) -> None:
        self.events: list[Event] = []
        self.ends: list[tuple[str, Any, str]] = []
        self.threads: set[bool] = set()
        handle.event.connect(self._event)
        handle.finished.connect(lambda *args: self.ends.append(args))

    def _event(self, event: Event) -> None:
        self.threads.add(threading.current_thread() is threading.main_thread())
        self.events.append(event)

    def first(self, kind: type) -> bool:
        return any(isinstance(e, kind) for e in self.events)


def test_process_job_runs_the_int8_recipe(qtbot, tmp_path: Path) -> None:
    job = ProcessJob(_int8_spec(tmp_path))
    seen = Recorder(job)
    with qtbot.waitSignal(job.finished, timeout=600_000):
        job.start()
    status, report, error = seen.ends[0]
    assert (status, error) == (FINISHED, "")
    assert report["compressed"]["onnx_bytes"] < report["baseline"]["onnx_bytes"]
    # Post-training int8 has no training steps: its live events are logs and metrics.
    assert seen.first(Log) and seen.first(Metric)
    assert (tmp_path / REPORT_FILE).exists()
    assert seen.threads == {True}


def test_cancel_a_training_process_is_quick_and_leaves_no_report(qtbot, tmp_path: Path,
                                                                training: str) -> None:
    job = ProcessJob(_spec(parse_recipe(training), tmp_path))
    seen = Recorder(job)
    job.start()
    qtbot.waitUntil(lambda: seen.first(Progress), timeout=120_000)
    asked = time.monotonic()
    with qtbot.waitSignal(job.finished, timeout=120_000):
        job.cancel()
    gone = time.monotonic() - asked
    assert seen.ends == [(CANCELLED, None, "")]
    assert job.process.state() == job.process.ProcessState.NotRunning
    assert not (tmp_path / REPORT_FILE).exists()
    # A figure to read, not to assert: a loaded machine may take longer.
    print(f"process cancel-to-gone: {gone:.3f} s")


def test_cancel_kills_a_child_that_ignores_sigterm(qtbot, sigterm_ignoring_job) -> None:
    job = sigterm_ignoring_job()
    seen = Recorder(job)
    job.start()
    qtbot.waitUntil(lambda: bool(seen.events), timeout=120_000)  # SIGTERM is ignored now
    with qtbot.waitSignal(job.finished, timeout=120_000):
        job.cancel()
    assert seen.ends == [(CANCELLED, None, "")]
    assert job.process.exitStatus() == job.process.ExitStatus.CrashExit  # killed, not stopped


def test_shutdown_kills_a_stubborn_child_without_the_event_loop(qtbot,
                                                                sigterm_ignoring_job) -> None:
    job = sigterm_ignoring_job()
    seen = Recorder(job)
    job.start()
    qtbot.waitUntil(lambda: bool(seen.events), timeout=120_000)
    pid = job.process.processId()
    job.shutdown(grace_ms=200)  # blocks: no timer fires, no queued signal arrives meanwhile
    assert job.done and seen.ends == [(CANCELLED, None, "")]
    assert job.process.exitStatus() == job.process.ExitStatus.CrashExit
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone and reaped, not a zombie


def test_a_killed_process_fails_readably(qtbot, tmp_path: Path, training: str) -> None:
    job = ProcessJob(_spec(parse_recipe(training), tmp_path))
    seen = Recorder(job)
    job.start()
    qtbot.waitUntil(lambda: bool(seen.events), timeout=120_000)
    with qtbot.waitSignal(job.finished, timeout=120_000):
        job.process.kill()
    status, report, error = seen.ends[0]
    assert status == FAILED and report is None
    assert "ended unexpectedly" in error and "untouched" in error
    assert "Traceback" not in error
    assert not (tmp_path / REPORT_FILE).exists()


def test_a_bad_recipe_fails_with_the_studio_error(qtbot, tmp_path: Path, training: str) -> None:
    recipe = parse_recipe(training.replace("{path: demo}", "{path: no/such/model.pt}"))
    job = ProcessJob(_spec(recipe, tmp_path / "out", tmp_path))
    seen = Recorder(job)
    with qtbot.waitSignal(job.finished, timeout=120_000):
        job.start()
    status, report, error = seen.ends[0]
    assert status == FAILED and report is None
    assert "model.pt" in error and "unexpected" not in error and "Traceback" not in error


def _counting(steps: int, delay: float = 0.01) -> Any:
    """A thread job of ``steps`` batches of ``delay`` seconds of pretend work each."""

    def job(token: CancelToken) -> Iterator[Event]:
        yield Log("counting")
        for step in range(1, steps + 1):
            token.check()
            time.sleep(delay)
            yield Progress("count", step, steps)
    return job


def test_thread_job_forwards_events_to_the_gui_thread(qtbot) -> None:
    job = ThreadJob(_counting(20, 0.001))
    seen = Recorder(job)
    with qtbot.waitSignal(job.finished, timeout=120_000):
        job.start()
    assert seen.ends == [(FINISHED, None, "")]
    assert [e.done for e in seen.events if isinstance(e, Progress)] == list(range(1, 21))
    assert seen.threads == {True}
    assert job.wait(1000)


def test_thread_job_cancels(qtbot) -> None:
    job = ThreadJob(_counting(1_000_000))  # hours of work: only the cancel ends it in time
    seen = Recorder(job)
    job.start()
    qtbot.waitUntil(lambda: seen.first(Progress), timeout=120_000)
    with qtbot.waitSignal(job.finished, timeout=120_000):
        job.cancel()
    assert seen.ends == [(CANCELLED, None, "")]
    assert job.wait(1000)


def test_thread_job_shutdown_delivers_its_end_without_the_event_loop(qtbot) -> None:
    job = ThreadJob(_counting(1_000_000))
    seen = Recorder(job)
    job.start()
    qtbot.waitUntil(lambda: seen.first(Progress), timeout=120_000)
    job.shutdown()
    assert job.done and seen.ends == [(CANCELLED, None, "")]
    assert job.wait(0)


def test_thread_job_reports_a_failure_as_text(qtbot) -> None:
    def broken(token: CancelToken) -> Iterator[Event]:
        yield Progress("x", 0, 1)
        raise ValueError("boom")

    job = ThreadJob(broken)
    seen = Recorder(job)
    with qtbot.waitSignal(job.finished, timeout=120_000):
        job.start()
    assert seen.ends == [(FAILED, None, "unexpected ValueError: boom")]
    job.wait(1000)


def test_jobs_model_passes_the_model_tester(qtbot, qtmodeltester) -> None:
    model = JobsModel()
    job = ThreadJob(_counting(5, 0.001))
    with qtbot.waitSignal(job.finished, timeout=120_000):
        model.add_job("count", job)
    qtmodeltester.check(model)


def test_progress_reaches_the_view_throttled(qtbot) -> None:
    model = JobsModel()
    job = ThreadJob(_counting(2_000, 0.0))
    model.add_job("fast", job)
    # All 2,000 events wait in the queue (the same burst on a fast or a slow machine)...
    assert job.wait(120_000)
    with qtbot.waitSignal(model.jobFinished, timeout=120_000):
        pass
    # ...but the view heard of them a handful of times, not once per event.
    assert model.view_updates < 10
    assert model.rows[0].fraction == 1.0


def test_shutdown_stops_every_job_and_the_model_goes_quiet(qtbot, sigterm_ignoring_job) -> None:
    model = JobsModel(max_running=1)
    stubborn = sigterm_ignoring_job()
    queued = ThreadJob(_counting(5, 0.001))
    model.add_job("stubborn", stubborn)
    model.add_job("queued", queued)
    qtbot.waitUntil(lambda: bool(model.rows[0].log), timeout=120_000)
    ended = []
    model.jobFinished.connect(lambda name, status, report: ended.append((name, status)))
    model.shutdown(grace_ms=200)
    assert ended == [("stubborn", CANCELLED), ("queued", CANCELLED)]
    assert not queued.started  # the stubborn job's end started no queued one
    assert stubborn.process.state() == stubborn.process.ProcessState.NotRunning
    stubborn.event.emit(Progress("late", 1, 2))  # nothing reaches the model any more
    assert model.rows[0].stage == "" and model.rowCount() == 2


def test_jobs_panel_shows_progress_and_cancels(qtbot, tmp_path: Path, training: str) -> None:
    panel = JobsPanel()
    qtbot.addWidget(panel)
    panel.resize(820, 380)
    panel.show()
    assert panel.device() == "cpu" and panel.device_combo.count() >= 1
    done = ThreadJob(_counting(30, 0.001))
    with qtbot.waitSignal(panel.jobFinished, timeout=120_000):
        panel.submit("PTQ int8 (thread)", done)
    longer = training.replace("train_samples: 512", "train_samples: 2048")
    job = ProcessJob(_spec(parse_recipe(longer), tmp_path))
    panel.submit("Prune 50% channels + KD", job)
    model = panel.model
    assert model.rowCount() == 2
    assert model.index(1, NAME).data() == "Prune 50% channels + KD"
    # Any progress of the training stage (on a loaded machine 10% can take minutes); its log
    # line is shown at the next flush, maybe after the progress it precedes.
    # "Time left" needs a second step of the stage to have a rate.
    qtbot.waitUntil(lambda: "distill" in (model.index(1, PROGRESS).data() or "")
                    and (model.index(1, PROGRESS).data(FractionRole) or 0) > 0
                    and model.index(1, LEFT).data() != ""
                    and "Recovering accuracy" in panel.log_view.toPlainText(), timeout=600_000)
    assert "distill" in model.index(1, PROGRESS).data() and "%" in model.index(1, PROGRESS).data()
    assert model.index(1, STATUS).data() == "running"
    assert panel.cancel_button.isEnabled()
    assert model.index(1, ELAPSED).data() and model.index(1, LEFT).data()
    assert "Recovering accuracy" in panel.log_view.toPlainText()
    panel.grab().save("/tmp/jobs-panel.png")
    with qtbot.waitSignal(panel.jobFinished, timeout=120_000) as finished:
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    assert finished.args[:2] == ["Prune 50% channels + KD", CANCELLED]
    assert model.index(1, STATUS).data() == CANCELLED
    assert not panel.cancel_button.isEnabled()
    assert "cancelled" in panel.log_view.toPlainText()
    panel.table.selectRow(0)
    assert "counting" in panel.log_view.toPlainText()


def test_jobs_panel_shows_a_failure_as_text(qtbot) -> None:
    def broken(token: CancelToken) -> Iterator[Event]:
        raise StudioError("the model file no/such.pt does not exist")
        yield

    panel = JobsPanel()
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.jobFinished, timeout=120_000):
        panel.submit("broken", ThreadJob(broken))
    assert panel.model.index(0, STATUS).data() == FAILED
    assert "no/such.pt does not exist" in panel.log_view.toPlainText()
    assert "no/such.pt does not exist" in panel.status_label.text()
