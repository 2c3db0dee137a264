"""The Run settings tab: one generated form per job section of the recipe (train, prune,
distill, quantize, export, and any section added to ``Recipe`` later), side by side.

The panel knows nothing of workspaces: it shows sections and emits valid ones through
:attr:`RunSettingsPanel.edited`; :class:`RunSettingsController` stores them undoably in the
open workspace and shows them back after undo, redo, a restored autosave or an experiment.
A section equal to its defaults is stored as absent, so project files stay short; an opt-in
section (distillation) is a checkable group whose tick adds or removes it.
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError
from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QGroupBox, QHBoxLayout, QScrollArea, QVBoxLayout, QWidget

from studio.core.plan.schema import is_opt_in, job_sections, label_of, model_help
from studio.qt.plan_controller import PlanController
from studio.qt.schema_form import SchemaForm
from studio.qt.session import QtSession

COLUMN_WIDTH = 250


class RunSettingsPanel(QWidget):
    edited = Signal(str, object)
    """(section key, a valid section or ``None`` for "absent")."""

    def __init__(self, exclude: tuple[str, ...] = (), parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.forms: dict[str, SchemaForm] = {}
        self.boxes: dict[str, QGroupBox] = {}
        row = QWidget()
        columns = QHBoxLayout(row)
        columns.setContentsMargins(4, 4, 4, 4)
        for key, model in job_sections().items():
            if key in exclude:
                continue
            form = SchemaForm(model)
            box = QGroupBox(label_of(key))
            box.setToolTip(model_help(model))
            box.setMinimumWidth(COLUMN_WIDTH)
            box.setCheckable(is_opt_in(model))
            layout = QVBoxLayout(box)
            layout.setContentsMargins(2, 2, 2, 2)
            layout.addWidget(form)
            layout.addStretch(1)
            form.edited.connect(lambda value, key=key: self._form_edited(key, value))
            if box.isCheckable():
                box.toggled.connect(lambda _on, key=key: self._toggled(key))
            self.forms[key] = form
            self.boxes[key] = box
            columns.addWidget(box, 1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(row)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self._loading = False
        self.setEnabled(False)

    def stored(self, key: str, value: BaseModel) -> BaseModel | None:
        """What the workspace keeps for a form's ``value``: ``None`` for an unticked opt-in
        section or a section at its defaults."""
        box = self.boxes[key]
        if box.isCheckable():
            return value if box.isChecked() else None
        return None if value == self.forms[key].model() else value

    def _form_edited(self, key: str, value: BaseModel) -> None:
        if not self._loading:
            self.edited.emit(key, self.stored(key, value))

    def _toggled(self, key: str) -> None:
        if self._loading:
            return
        try:
            value = self.forms[key].value()
        except ValidationError:
            value = self.forms[key].model()
        self.edited.emit(key, self.stored(key, value))

    def shown(self, key: str) -> BaseModel | bool | None:
        """The section the form shows as it would be stored; ``False`` when it is invalid."""
        try:
            return self.stored(key, self.forms[key].value())
        except ValidationError:
            return False

    def set_section(self, key: str, section: BaseModel | None) -> None:
        """Show ``section`` (``None``: absent) without emitting :attr:`edited`."""
        if key not in self.forms:
            return
        self._loading = True
        try:
            box = self.boxes[key]
            if box.isCheckable():
                box.setChecked(section is not None)
            self.forms[key].set_value(section)
        finally:
            self._loading = False

    @property
    def problem(self) -> str:
        """Every form's inline message, joined ("" when all are valid)."""
        return " ".join(form.problem for form in self.forms.values() if form.problem)


class RunSettingsController(QObject):
    """Stores the panel's sections in the session's open workspace, one undoable edit each."""

    def __init__(self, session: QtSession, panel: RunSettingsPanel,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.panel = panel
        panel.edited.connect(self._edited)
        session.opened.connect(self._opened)

    @property
    def controller(self) -> PlanController | None:
        """The open workspace's plan controller (its undo stack)."""
        return self.session.plan

    def _opened(self) -> None:
        """A workspace was opened: show its sections and follow its undo stack."""
        controller = self.controller
        assert controller is not None
        controller.stagesChanged.connect(self._stage_changed)
        self.panel.setEnabled(True)
        for key in self.panel.forms:
            self.panel.set_section(key, controller.workspace.stages.get(key))

    def _edited(self, key: str, section: BaseModel | None) -> None:
        if self.controller is not None:
            self.controller.set_stage(key, section)

    def _stage_changed(self, key: str) -> None:
        """Show a section changed by undo/redo or a restore, unless the form holds it already
        (the change came from the form, mid-typing)."""
        if self.controller is None or key not in self.panel.forms:
            return
        section = self.controller.workspace.stages.get(key)
        if self.panel.shown(key) != section:
            self.panel.set_section(key, section)
