"""How a form over a pydantic model treats an edit: the model itself validates the form's values;
what it refuses is named in red under the form and its editor outlined, never raised, and only a
valid value leaves the form. Shared by the generated forms (:mod:`studio.qt.schema_form`) and
the Data tab's hand-laid form (:mod:`studio.qt.data_panel`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError
from PySide6.QtCore import SignalInstance
from PySide6.QtWidgets import QLabel

INVALID_STYLE = "border: 1px solid #b00020;"
ERROR_COLOUR = "#b00020"

T = TypeVar("T")


def first_problem(error: ValidationError, help_of: Callable[[tuple[Any, ...]], str]
                  ) -> tuple[tuple[Any, ...], str]:
    """(location, sentence) of the first thing the schema refused; a text that does not match
    its field's pattern is explained by the field's help (``help_of(location)``), not by the
    regular expression."""
    item = error.errors()[0]
    location = tuple(item["loc"])
    message = item["msg"].removeprefix("Value error, ")
    if item["type"] == "string_pattern_mismatch" and help_of(location):
        message = f"{item['input']!r} is not accepted: {help_of(location).rstrip('.')}"
    field = ".".join(str(part) for part in location)
    return location, f"{field}: {message}" if field else message


def problem_label() -> QLabel:
    """The red line under a form that names what the schema refused ("" when valid)."""
    label = QLabel()
    label.setStyleSheet(f"color: {ERROR_COLOUR};")
    label.setWordWrap(True)
    return label


def emit_if_valid(read: Callable[[], T], show_problem: Callable[[ValidationError | None], None],
                  edited: SignalInstance) -> None:
    """Validate the form through ``read`` (which raises the schema's ``ValidationError``):
    a refused value is shown by ``show_problem`` and goes no further; a valid one clears the
    problem and leaves through ``edited``."""
    try:
        value = read()
    except ValidationError as error:
        show_problem(error)
        return
    show_problem(None)
    edited.emit(value)
