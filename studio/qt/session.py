"""The Qt face of the core :class:`~studio.core.project.session.Session`: its events as
signals, and the plan controller (undo stack) of the open workspace.

Controllers take this object, read the session through it and listen to its signals; none of
them reaches into the main window.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Signal

from studio.core.project.session import Session
from studio.qt.plan_controller import PlanController


class QtSession(QObject):
    opened = Signal()
    """A workspace was installed (a model, a project, or the same model re-traced);
    :attr:`plan` is its new controller."""
    dirtyChanged = Signal(bool)
    saved = Signal(str)
    """The project's manifest, just written."""
    historyLoaded = Signal()
    """The project's experiments and sensitivity sweep were (re)read."""
    experimentAdded = Signal(object)
    sensitivityChanged = Signal(object)

    def __init__(self, session: Session, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.core = session
        self.plan: PlanController | None = None
        session.subscribe(self._event)

    def set_clean(self, clean: bool) -> None:
        """The undo stack's clean state is the session's dirty flag (a member slot, so Qt
        drops the connection when this object goes before the undo group)."""
        self.core.set_dirty(not clean)

    def _event(self, event: str, payload: Any) -> None:
        if event == "opened":
            assert self.core.workspace is not None
            if self.plan is not None:
                self.plan.deleteLater()
            self.plan = PlanController(self.core.workspace, self)
            self.opened.emit()
        elif event == "dirty":
            self.dirtyChanged.emit(payload)
        elif event == "saved":
            self.saved.emit(str(payload))
        elif event == "history":
            self.historyLoaded.emit()
        elif event == "experiment":
            self.experimentAdded.emit(payload)
        elif event == "sensitivity":
            self.sensitivityChanged.emit(payload)
