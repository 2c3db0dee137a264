"""Qt fixtures: a main window with its own settings file, a way to wait for opens, a child
process that ignores SIGTERM, and a check that no child process or pool thread outlives a test.

Every wait here is on a signal or a condition; its timeout only bounds a hang, so it is generous
enough for a machine ten times slower than a developer's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, QThreadPool
from PySide6.QtWidgets import QMessageBox

from studio.qt.gui_thread_gc import collect_garbage_in_gui_thread
from studio.qt.jobs import ProcessJob
from studio.qt.main_window import MainWindow

HANG_MS = 120_000
"""How long a wait may last before the test calls it a hang."""
JOB_HANG_MS = 600_000
"""The same for a whole compression job, which a loaded machine may slow twentyfold."""
IGNORES_SIGTERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ignoring SIGTERM', flush=True)\n"
    "time.sleep(600)\n")


def _child_processes() -> set[int]:
    """The ids of processes whose parent is this one, zombies included (read from /proc:
    psutil is not among the dependencies)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            after_name = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(after_name[1]) == os.getpid():
            children.add(int(stat.parent.name))
    return children


@pytest.fixture(autouse=True, scope="session")
def garbage_is_collected_in_the_gui_thread(qapp) -> None:
    """As in the studio (:mod:`studio.qt.gui_thread_gc`): without it a worker thread could free
    an earlier test's window and deadlock against the GUI thread."""
    collect_garbage_in_gui_thread(qapp)


@pytest.fixture(autouse=True)
def no_process_or_thread_outlives_the_test(qtbot) -> Iterator[None]:
    """After the test's widgets are closed: every child process it started is gone (reaped)
    and no thread-pool worker still runs."""
    if not Path("/proc/self/stat").exists():
        yield
        return
    before = _child_processes()
    yield

    def all_gone() -> None:
        left = _child_processes() - before
        assert not left, f"child processes outlived the test: {sorted(left)}"
        assert QThreadPool.globalInstance().activeThreadCount() == 0, "a pool worker still runs"

    qtbot.waitUntil(all_gone, timeout=HANG_MS)


class SigtermIgnoringJob(ProcessJob):
    """A job whose real child process ignores SIGTERM and sleeps: only a kill stops it. Its
    first event is the log line "ignoring SIGTERM", sent once the signal is ignored."""

    def __init__(self) -> None:
        super().__init__({"kind": "none"})

    def command(self, spec_path: str) -> tuple[str, list[str]]:
        return sys.executable, ["-c", IGNORES_SIGTERM]


@pytest.fixture
def sigterm_ignoring_job() -> Callable[[], SigtermIgnoringJob]:
    return SigtermIgnoringJob


@pytest.fixture
def settings(tmp_path: Path) -> QSettings:
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def recovery_dir(tmp_path: Path) -> Path:
    """Where unsaved plans are autosaved: per test, never the user's own folder."""
    return tmp_path / "recovery"


@pytest.fixture
def make_window(qtbot, settings: QSettings, monkeypatch,
                recovery_dir: Path) -> Iterator[Callable[[], MainWindow]]:
    """New main windows sharing the test's settings and recovery folder."""
    made: list[MainWindow] = []

    def make() -> MainWindow:
        win = MainWindow(settings, recovery_dir)
        # Closing a window with edits asks to save; a test that ends (or fails) keeps the
        # autosave for the next window instead of blocking on the question.
        monkeypatch.setattr(win, "ask_save_changes", lambda: QMessageBox.StandardButton.Cancel)
        monkeypatch.setattr(win.project, "maybe_save", lambda: True)
        # Closing with jobs running asks too; the test's end stops them instead of blocking.
        monkeypatch.setattr(win, "ask_stop_jobs", lambda: True)
        qtbot.addWidget(win)
        win.show()
        made.append(win)
        return win

    yield make
    for win in made:
        qtbot.waitUntil(lambda w=win: not w.busy_working, timeout=HANG_MS)


@pytest.fixture
def window(make_window: Callable[[], MainWindow]) -> MainWindow:
    return make_window()


@pytest.fixture
def open_and_wait(qtbot) -> Callable[..., None]:
    """Open a path in a window and wait until the window has it."""

    def opener(win: MainWindow, path: str, **kwargs: object) -> None:
        with qtbot.waitSignal(win.workspaceOpened, timeout=HANG_MS):
            win.project.open_path(path, **kwargs)

    return opener


@pytest.fixture
def run_plan_and_wait(qtbot) -> Callable[[MainWindow], dict]:
    """Run the window's plan as an experiment; wait for the job, check it finished, give its
    report."""

    def run(win: MainWindow) -> dict:
        job = win.compress.run_plan()
        assert job is not None, win.notices.text.text()
        with qtbot.waitSignal(job.finished, timeout=JOB_HANG_MS) as finished:
            pass
        assert finished.args[0] == "finished", finished.args[2]
        return finished.args[1]

    return run


@pytest.fixture
def demo_window(window: MainWindow, open_and_wait: Callable[..., None]) -> MainWindow:
    open_and_wait(window, "demo")
    return window
