"""The consent prompts themselves: Cancel is the default, only the accept button consents."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

from studio.qt.dialogs import ask_build_architecture, ask_run_function, ask_trust


def _answer(box: QMessageBox, accept: bool) -> None:
    """Click the prompt's accept button, or its default button when not accepting."""
    if accept:
        next(b for b in box.buttons()
             if box.buttonRole(b) == QMessageBox.ButtonRole.AcceptRole).click()
    else:
        box.defaultButton().click()


@pytest.mark.parametrize("accept", [True, False])
def test_consent_prompts(qtbot, accept: bool) -> None:
    parent = QWidget()
    qtbot.addWidget(parent)
    run_function = functools.partial(ask_run_function, file="/projects/a/mydata.py")
    build = functools.partial(ask_build_architecture, file=Path("/projects/a/project.yaml"))
    for ask, subject, words in ((ask_trust, Path("model.pt"), "model.pt"),
                                (run_function, "mydata:batches", "mydata:batches"),
                                (run_function, "mydata:batches", "/projects/a/mydata.py"),
                                (build, "mynets:build", "mynets:build"),
                                (build, "mynets:build", "project.yaml")):
        shown: list[str] = []

        def answer(shown: list[str] = shown) -> None:
            box = next(w for w in QApplication.topLevelWidgets()
                       if isinstance(w, QMessageBox) and w.isVisible())
            shown.append(box.text())
            _answer(box, accept)

        QTimer.singleShot(0, answer)
        assert ask(parent, subject) is accept
        assert words in shown[0]
