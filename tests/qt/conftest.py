"""Qt fixtures: a main window with its own settings file, and a way to wait for opens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMessageBox

from studio.qt.main_window import MainWindow


@pytest.fixture
def settings(tmp_path: Path) -> QSettings:
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def window(qtbot, settings: QSettings, monkeypatch) -> MainWindow:
    win = MainWindow(settings)
    # Closing a window with edits asks to save; a test that ends (or fails) just discards them.
    monkeypatch.setattr(win, "ask_save_changes", lambda: QMessageBox.StandardButton.Discard)
    qtbot.addWidget(win)
    win.show()
    yield win
    qtbot.waitUntil(lambda: not win.busy_working, timeout=30_000)


@pytest.fixture
def open_and_wait(qtbot) -> Callable[..., None]:
    """Open a path in a window and wait until the window has it."""

    def opener(win: MainWindow, path: str, **kwargs: object) -> None:
        with qtbot.waitSignal(win.workspaceOpened, timeout=30_000):
            win.open_path(path, **kwargs)

    return opener


@pytest.fixture
def demo_window(window: MainWindow, open_and_wait: Callable[..., None]) -> MainWindow:
    open_and_wait(window, "demo")
    return window
