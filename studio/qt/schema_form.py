"""Forms generated from a pydantic model: one editor per field, chosen by the field's type, with
the schema's limits, choices and help (see :mod:`studio.core.plan.schema`).

bool → check box, Literal → combo box, int/float → spin boxes bounded by ``ge/gt/le/lt``, str →
line edit, a nested model → a group box holding its own form, a list of models → a small table
with Add and Remove. Every edit is validated by the model itself; a value it refuses is named in
red under the form and its editor outlined, and only valid models leave through
:attr:`SchemaForm.edited`. Hand-written so the forms follow the recipe's own models: the form
libraries for Qt (e.g. magicgui) build from signatures, not from pydantic field limits and
attribute docstrings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from PySide6.QtCore import Signal
from PySide6.QtGui import QBrush, QColor, QValidator
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.core.plan.schema import FieldForm, model_help, section_fields
from studio.qt.form_validation import INVALID_STYLE, emit_if_valid, first_problem, problem_label

NOT_SET = "not set"
INT_LIMIT = 2**31 - 1
FLOAT_LIMIT = 1e9
FLOAT_DECIMALS = 6


class _FloatSpin(QDoubleSpinBox):
    """Shows ``0.001`` and ``4`` rather than ``0.001000`` and ``4.000000``; typing ``1e-4``
    works too."""

    def textFromValue(self, value: float) -> str:
        return self.specialValueText() if self.specialValueText() and \
            value == self.minimum() else f"{value:.{FLOAT_DECIMALS}g}"

    def valueFromText(self, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            return self.minimum()

    def validate(self, text: str, pos: int) -> object:
        stripped = text.strip()
        if stripped == self.specialValueText():
            return QValidator.State.Acceptable, text, pos
        try:
            value = float(stripped)
        except ValueError:
            return QValidator.State.Intermediate, text, pos
        inside = self.minimum() <= value <= self.maximum()
        return (QValidator.State.Acceptable if inside else QValidator.State.Intermediate,
                text, pos)


class _Editor:
    """One field's widget with a getter and a setter of the value the schema validates."""

    def __init__(self, widget: QWidget, get: Callable[[], Any], put: Callable[[Any], None],
                 changed: list[Any]) -> None:
        self.widget = widget
        self.get = get
        self.put = put
        self.changed = changed
        """Qt signals that mean "the user edited this"."""


def _bounds(field: FieldForm, step: float, limit: float) -> tuple[float, float]:
    low = -limit if field.low is None else field.low + (step if field.low_open else 0)
    high = limit if field.high is None else field.high - (step if field.high_open else 0)
    if field.optional:  # one step below the range means "not set"
        low -= step
    return low, high


def _spin_editor(field: FieldForm) -> _Editor:
    if field.kind == "int":
        spin: QAbstractSpinBox = QSpinBox()
        step = 1.0
        low, high = _bounds(field, step, INT_LIMIT)
        spin.setRange(int(max(low, -INT_LIMIT)), int(min(high, INT_LIMIT)))
        spin.setGroupSeparatorShown(True)
    else:
        spin = _FloatSpin()
        step = 10.0 ** -FLOAT_DECIMALS
        spin.setDecimals(FLOAT_DECIMALS)
        spin.setRange(*_bounds(field, step, FLOAT_LIMIT))
        spin.setStepType(QAbstractSpinBox.StepType.AdaptiveDecimalStepType)
    if field.optional:
        spin.setSpecialValueText(NOT_SET)
    spin.setKeyboardTracking(False)  # one edit per finished number, not per keystroke

    def get() -> Any:
        if field.optional and spin.value() == spin.minimum():
            return None
        return spin.value()

    def put(value: Any) -> None:
        spin.setValue(spin.minimum() if value is None else value)

    return _Editor(spin, get, put, [spin.valueChanged])


def _choice_editor(field: FieldForm) -> _Editor:
    combo = QComboBox()
    if field.optional:
        combo.addItem(NOT_SET, None)
    for choice in field.choices:
        combo.addItem(str(choice), choice)

    def put(value: Any) -> None:
        combo.setCurrentIndex(max(0, field.choices.index(value) + field.optional
                                  if value in field.choices else 0))

    return _Editor(combo, combo.currentData, put, [combo.currentIndexChanged])


def _bool_editor(field: FieldForm) -> _Editor:
    if field.optional:  # three states: not set, yes, no
        return _choice_editor(FieldForm(field.name, field.label, "choice", field.help,
                                        field.default, True, choices=(True, False)))
    box = QCheckBox()
    return _Editor(box, box.isChecked, lambda value: box.setChecked(bool(value)), [box.toggled])


def _text_editor(field: FieldForm) -> _Editor:
    edit = QLineEdit()
    edit.setClearButtonEnabled(True)
    if field.optional:
        edit.setPlaceholderText(NOT_SET)

    def get() -> Any:
        text = edit.text().strip()
        if field.kind == "text":
            return text or (None if field.optional else "")
        if not text:
            return None
        try:  # "0.5, 0.5" is a list; "[28, 28]" too
            value = yaml.safe_load(text)
            if isinstance(value, str) and "," in text:
                value = yaml.safe_load(f"[{text}]")
        except yaml.YAMLError:
            return text  # the schema then names the field
        if field.many and not isinstance(value, (list, tuple)):
            return [value]  # one value where a list is expected ("0.5": one for all)
        return value

    def put(value: Any) -> None:
        if value is None:
            edit.setText("")
        elif isinstance(value, (list, tuple)):
            edit.setText(", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value))
        else:
            edit.setText(str(value))

    return _Editor(edit, get, put, [edit.textChanged])


class RowsTable(QWidget):
    """A list of small models as rows (one column per field) with Add and Remove buttons."""

    edited = Signal()

    def __init__(self, model: type[BaseModel]) -> None:
        super().__init__()
        self.fields = section_fields(model)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.table = QTableWidget(0, len(self.fields))
        self.table.setHorizontalHeaderLabels([f.label for f in self.fields])
        for column, field in enumerate(self.fields):
            self.table.horizontalHeaderItem(column).setToolTip(field.help)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().hide()
        self.table.setMinimumHeight(90)
        self.table.itemChanged.connect(lambda _item: self._emit())
        buttons = QHBoxLayout()
        self.add_button = QPushButton("Add")
        self.add_button.setToolTip(model_help(model))
        self.remove_button = QPushButton("Remove")
        self.add_button.clicked.connect(self.add_row)
        self.remove_button.clicked.connect(self.remove_row)
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        buttons.addStretch(1)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        self._loading = False

    def _emit(self) -> None:
        if not self._loading:
            self.edited.emit()

    def add_row(self) -> None:
        """A row holding each field's default (empty where there is none)."""
        self._loading = True
        row = self.table.rowCount()
        self.table.insertRow(row)
        for column, field in enumerate(self.fields):
            self.table.setItem(row, column, QTableWidgetItem(
                "" if field.default is None else str(field.default)))
        self._loading = False
        self._emit()

    def remove_row(self) -> None:
        row = self.table.currentRow()
        if row < 0:
            row = self.table.rowCount() - 1
        if row >= 0:
            self.table.removeRow(row)
            self._emit()

    def rows(self) -> list[dict[str, Any]]:
        """Each row as the data the row model validates (numbers parsed, empty cells unset)."""
        rows = []
        for row in range(self.table.rowCount()):
            values: dict[str, Any] = {}
            for column, field in enumerate(self.fields):
                item = self.table.item(row, column)
                text = item.text().strip() if item is not None else ""
                if text:
                    values[field.name] = _parse_cell(text, field)
                elif field.kind == "text" and not field.optional:
                    values[field.name] = ""
            rows.append(values)
        return rows

    def set_rows(self, rows: list[BaseModel]) -> None:
        self._loading = True
        self.table.setRowCount(0)
        for row, model in enumerate(rows):
            self.table.insertRow(row)
            for column, field in enumerate(self.fields):
                value = getattr(model, field.name)
                text = "" if value is None else f"{value:g}" if isinstance(value, float) \
                    else str(value)
                self.table.setItem(row, column, QTableWidgetItem(text))
        self._loading = False

    def mark(self, row: int | None, column_name: str | None) -> None:
        """Outline the cell the schema refused (``None``: clear every mark)."""
        self._loading = True
        for r in range(self.table.rowCount()):
            for c, field in enumerate(self.fields):
                item = self.table.item(r, c)
                if item is not None:
                    bad = r == row and field.name == column_name
                    item.setBackground(QBrush(QColor("#f9d6dc")) if bad else QBrush())
        self._loading = False


def _parse_cell(text: str, field: FieldForm) -> Any:
    if field.kind in ("int", "float"):
        try:
            return int(text) if field.kind == "int" else float(text)
        except ValueError:
            return text  # the schema names the cell
    return text


def _table_editor(field: FieldForm) -> _Editor:
    assert field.model is not None
    table = RowsTable(field.model)
    return _Editor(table, table.rows, lambda rows: table.set_rows(list(rows or [])),
                   [table.edited])


class SchemaForm(QWidget):
    """A form over one pydantic model, generated from its fields."""

    edited = Signal(object)
    """A valid instance of the model, after each user edit."""
    touched = Signal()
    """Any user edit, valid or not (a parent form validates the whole)."""

    def __init__(self, model: type[BaseModel], parent: QWidget | None = None,
                 show_problems: bool = True) -> None:
        super().__init__(parent)
        self.model = model
        self.fields = section_fields(model)
        self.editors: dict[str, _Editor] = {}
        self.children_forms: dict[str, SchemaForm] = {}
        self._loading = False
        self.layout_ = QFormLayout(self)
        self.layout_.setContentsMargins(4, 4, 4, 4)
        for field in self.fields:
            editor = self._editor(field)
            self.editors[field.name] = editor
            editor.widget.setToolTip(field.help)
            editor.widget.setObjectName(field.name)
            if field.kind == "section":
                self.layout_.addRow(editor.widget)
            elif field.kind == "table":
                label = QLabel(field.label)
                label.setToolTip(field.help)
                self.layout_.addRow(label)
                self.layout_.addRow(editor.widget)
            else:
                label = QLabel(field.label)
                label.setToolTip(field.help)
                self.layout_.addRow(label, editor.widget)
            for signal in editor.changed:
                signal.connect(self._changed)
        self.error = problem_label()
        if show_problems:
            self.layout_.addRow(self.error)
        self.set_value(None)

    def _editor(self, field: FieldForm) -> _Editor:
        if field.kind == "section":
            assert field.model is not None
            child = SchemaForm(field.model, show_problems=False)
            self.children_forms[field.name] = child
            box = QGroupBox(field.label)
            QVBoxLayout(box).addWidget(child)
            return _Editor(box, child.values, child.set_value, [child.touched])
        if field.kind == "table":
            return _table_editor(field)
        if field.kind in ("int", "float"):
            return _spin_editor(field)
        if field.kind == "choice":
            return _choice_editor(field)
        if field.kind == "bool":
            return _bool_editor(field)
        return _text_editor(field)

    # --- form ↔ model ----------------------------------------------------------------------
    def set_value(self, value: BaseModel | dict[str, Any] | None) -> None:
        """Show ``value`` (``None``: the model's defaults) without emitting :attr:`edited`."""
        if value is None:
            value = self.model()
        elif isinstance(value, dict):
            value = self.model.model_validate(value)
        self._loading = True
        try:
            for field in self.fields:
                self.editors[field.name].put(getattr(value, field.name))
        finally:
            self._loading = False
        self.show_problem(None)

    def values(self) -> dict[str, Any]:
        """The form as the data the model validates."""
        return {name: editor.get() for name, editor in self.editors.items()}

    def value(self) -> BaseModel:
        """The form's model; raises ``ValidationError`` when the schema refuses it."""
        return self.model.model_validate(self.values())

    def _changed(self, *_args: object) -> None:
        if self._loading:
            return
        self.touched.emit()
        emit_if_valid(self.value, self.show_problem, self.edited)

    def show_problem(self, error: ValidationError | None) -> None:
        """Name what the schema refused in red and outline its editor (``None``: clear)."""
        location, message = first_problem(error, self.help_at) if error is not None \
            else ((), "")
        self.error.setText(message)
        self.mark(location)

    def help_at(self, location: tuple[Any, ...]) -> str:
        """The help of the field at a validation error's location ("" if none is found)."""
        field = next((f for f in self.fields if location and f.name == location[0]), None)
        if field is None:
            return ""
        if field.name in self.children_forms:
            return self.children_forms[field.name].help_at(location[1:])
        if field.kind == "table" and len(location) > 2:
            table = self.editors[field.name].widget
            assert isinstance(table, RowsTable)
            return next((f.help for f in table.fields if f.name == location[2]), "")
        return field.help

    def mark(self, location: tuple[Any, ...]) -> None:
        name = location[0] if location else None
        for field_name, editor in self.editors.items():
            bad = field_name == name
            if field_name in self.children_forms:
                self.children_forms[field_name].mark(location[1:] if bad else ())
            elif isinstance(editor.widget, RowsTable):
                editor.widget.mark(
                    location[1] if bad and len(location) > 1 else None,
                    str(location[2]) if bad and len(location) > 2 else None)
                editor.widget.table.setStyleSheet(INVALID_STYLE if bad else "")
            else:
                editor.widget.setStyleSheet(INVALID_STYLE if bad else "")

    @property
    def problem(self) -> str:
        """The inline message shown now ("" when the form is valid)."""
        return self.error.text()
