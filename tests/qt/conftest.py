"""Qt fixtures: a main window with its own settings file, and a way to wait for opens."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMessageBox

from studio.qt.main_window import MainWindow


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
        monkeypatch.setattr(win, "maybe_save", lambda: True)
        qtbot.addWidget(win)
        win.show()
        made.append(win)
        return win

    yield make
    for win in made:
        qtbot.waitUntil(lambda w=win: not w.busy_working, timeout=30_000)


@pytest.fixture
def window(make_window: Callable[[], MainWindow]) -> MainWindow:
    return make_window()


@pytest.fixture
def open_and_wait(qtbot) -> Callable[..., None]:
    """Open a path in a window and wait until the window has it."""

    def opener(win: MainWindow, path: str, **kwargs: object) -> None:
        with qtbot.waitSignal(win.workspaceOpened, timeout=30_000):
            win.open_path(path, **kwargs)

    return opener


@pytest.fixture
def run_plan_and_wait(qtbot) -> Callable[[MainWindow], dict]:
    """Run the window's plan as an experiment; wait for the job, check it finished, give its
    report."""

    def run(win: MainWindow) -> dict:
        job = win.compress.run_plan()
        assert job is not None, win.notices.text.text()
        with qtbot.waitSignal(job.finished, timeout=120_000) as finished:
            pass
        assert finished.args[0] == "finished", finished.args[2]
        return finished.args[1]

    return run


@pytest.fixture
def demo_window(window: MainWindow, open_and_wait: Callable[..., None]) -> MainWindow:
    open_and_wait(window, "demo")
    return window
