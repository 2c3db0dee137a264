"""Does the window stay responsive while a job trains, and how fast does cancel take effect?

    python -m benchmarks.gui [--json PATH] [--epochs N]

Opens the real main window offscreen on the demo, plans 50% channel pruning with distillation,
and runs the recovery job twice: out of process (the studio's default, ``ProcessJob``) and in a
worker thread (``ThreadJob`` over the same core generator). A 5 ms heartbeat timer measures how
late the event loop serves it (the stall); after a few seconds of training the job is cancelled
and the time until it is gone is taken. The JSON's top-level ``stall_p99_ms``, ``stall_max_ms``
and ``cancel_s`` are those of the default (out-of-process) mode.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_json

HEARTBEAT_MS = 5
TRAIN_SECONDS = 6.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(mode: str, epochs: int) -> dict[str, Any]:
    from PySide6.QtCore import QElapsedTimer, QEventLoop, QSettings, Qt, QTimer

    from studio.core.engine.run import run_workspace
    from studio.core.plan.stages import TrainSection
    from studio.qt.app import application
    from studio.qt.jobs import ThreadJob
    from studio.qt.main_window import MainWindow

    application()
    folder = Path(tempfile.mkdtemp(prefix=f"gui-bench-{mode}-"))
    window = MainWindow(QSettings(str(folder / "settings.ini"), QSettings.Format.IniFormat),
                        folder / "recovery")
    window.show()
    loop = QEventLoop()
    window.workspaceOpened.connect(loop.quit)
    window.project.open_path("demo")
    loop.exec()
    window.workspace.stages = {"train": TrainSection(epochs=epochs)}
    for field, value in (("sparsity", 0.5), ("granularity", "channels")):
        window.controller.set_field([""], field, value)
    window.controller.set_field(["head"], "exclude", True)
    window.project.save_project_to(folder / "project")

    if mode == "process":
        job = window.compress.run_plan()
    else:
        recipe = window.workspace.to_recipe(base=folder / "project")
        workspace = window.workspace
        job = ThreadJob(lambda token: run_workspace(workspace, recipe, folder / "out", token))
        window.jobs.submit("in-thread", job)
    assert job is not None

    stalls: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.nsecsElapsed()]

    def beat() -> None:
        now = clock.nsecsElapsed()
        stalls.append(max(0.0, (now - last[0]) / 1e6 - HEARTBEAT_MS))
        last[0] = now

    heartbeat = QTimer()
    heartbeat.setTimerType(Qt.TimerType.PreciseTimer)
    heartbeat.timeout.connect(beat)
    heartbeat.start(HEARTBEAT_MS)
    training = QEventLoop()
    started: list[float] = []

    def on_event(event: object) -> None:
        if type(event).__name__ == "Progress" and not started:
            started.append(time.monotonic())
            QTimer.singleShot(int(TRAIN_SECONDS * 1000), training.quit)

    job.event.connect(on_event)
    job.finished.connect(training.quit)
    QTimer.singleShot(120_000, training.quit)
    training.exec()
    heartbeat.stop()
    result: dict[str, Any] = {"mode": mode, "beats": len(stalls)}
    if not stalls or not started:
        result["error"] = "the job did not start training"
        return result
    result.update(stall_p50_ms=statistics.median(stalls), stall_p99_ms=_percentile(stalls, 0.99),
                  stall_max_ms=max(stalls))
    gone = QEventLoop()
    job.finished.connect(gone.quit)
    began = time.monotonic()
    job.cancel()
    if not job.done:
        QTimer.singleShot(30_000, gone.quit)
        gone.exec()
    result["cancel_s"] = time.monotonic() - began
    result["status_after_cancel"] = job.status
    window.jobs.shutdown()
    window.controller.undo_stack.setClean()
    window.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    rows = [measure(mode, args.epochs) for mode in ("process", "thread")]
    default = rows[0]
    figures = {"stall_p99_ms": default.get("stall_p99_ms"),
               "stall_max_ms": default.get("stall_max_ms"), "cancel_s": default.get("cancel_s"),
               "modes": {row["mode"]: row for row in rows}, "heartbeat_ms": HEARTBEAT_MS,
               "cpu_count": os.cpu_count()}
    print(f"{'mode':<8} {'beats':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'cancel s':>9}")
    for row in rows:
        print(f"{row['mode']:<8} {row['beats']:>6} {row.get('stall_p50_ms', 0):>8.2f} "
              f"{row.get('stall_p99_ms', 0):>8.2f} {row.get('stall_max_ms', 0):>8.2f} "
              f"{row.get('cancel_s', 0):>9.3f}")
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
