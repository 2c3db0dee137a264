"""The few questions the studio must ask: trust a pickle or a data function, name an
architecture, give a shape, replace files the user has. (Sweeps, targets and example inputs
have their own dialogs in :mod:`studio.qt.compress_dialogs`.)"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QVBoxLayout,
    QWidget,
)

from studio.core.errors import StudioError
from studio.core.models.inputs import InputSpec


def _ask_to_run_code(parent: QWidget, title: str, text: str, details: str,
                     accept: str) -> bool:
    """A warning whose default answer is Cancel: consent before anything runs foreign code."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(title)
    box.setText(text)
    box.setInformativeText(details)
    allow = box.addButton(accept, QMessageBox.ButtonRole.AcceptRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    return box.clickedButton() is allow


def ask_trust(parent: QWidget, path: Path) -> bool:
    """Consent before unpickling: it runs code from the file."""
    return _ask_to_run_code(
        parent, "Run code from this file?",
        f"<b>{path.name}</b> is a pickled Python object, not just weights.",
        "Unpickling it runs code stored in the file, with your permissions. Open it only if you "
        "trust where it came from. Weights-only formats (.safetensors, state dicts, .pt2, "
        ".onnx) never need this.", "Trust and Open")


def ask_run_function(parent: QWidget, function: str, file: str | None) -> bool:
    """Consent before importing a data source ``package.module:function``: it runs its code."""
    where = f" in <b>{html.escape(file)}</b>" if file else ""
    return _ask_to_run_code(
        parent, "Run code to load the data?",
        f"The data comes from the Python function <b>{html.escape(function)}</b>{where}.",
        "Loading it imports that module and runs the function, with your permissions, "
        "for checks and in every job that uses this data. You are asked again if the file "
        "changes. Allow it only if you trust the code. Files (image folders, .npz/.npy, CSV) "
        "never need this.", "Run the Function")


def ask_build_architecture(parent: QWidget, architecture: str, file: Path) -> bool:
    """Consent before calling a model factory a project or recipe names outside the studio's
    own: importing its module and calling it runs its code."""
    return _ask_to_run_code(
        parent, "Run code to build the model?",
        f"<b>{html.escape(file.name)}</b> builds its model with the Python function "
        f"<b>{html.escape(architecture)}</b>, which is not one of the studio's own models.",
        f"Opening it imports that module and calls the function, with your permissions "
        f"({html.escape(str(file))}). Allow it only if you trust where the project came from.",
        "Run the Function")


@dataclass(frozen=True)
class ModelDetails:
    architecture: str | None
    example: InputSpec | None


class ModelDetailsDialog(QDialog):
    """Asks for what the file cannot tell: its architecture and/or its example input."""

    def __init__(self, parent: QWidget | None, path: str, reason: str,
                 architecture: str | None, example: InputSpec | None,
                 need_architecture: bool) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Open {Path(path).name}")
        layout = QVBoxLayout(self)
        message = QLabel(reason)
        message.setWordWrap(True)
        layout.addWidget(message)
        form = QFormLayout()
        layout.addLayout(form)
        self.architecture = QLineEdit(architecture or "")
        self.architecture.setPlaceholderText("package.module:factory")
        self.architecture.setToolTip("The function that builds the module the weights belong to")
        if need_architecture:
            form.addRow("Architecture", self.architecture)
        self.shape = QLineEdit(str(example) if example else "")
        self.shape.setPlaceholderText("e.g. 1,3,224,224 or 1,128:int64")
        form.addRow("Example input", self.shape)
        self.error = QLabel()
        self.error.setStyleSheet("color: #b00020;")
        layout.addWidget(self.error)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.need_architecture = need_architecture
        self.details: ModelDetails | None = None

    def _accept(self) -> None:
        try:
            example = InputSpec.parse(self.shape.text()) if self.shape.text().strip() else None
        except StudioError as error:
            self.error.setText(str(error))
            return
        architecture = self.architecture.text().strip() or None
        if self.need_architecture and not architecture:
            self.error.setText("Name the architecture as package.module:factory.")
            return
        self.details = ModelDetails(architecture, example)
        self.accept()


def ask_model_details(parent: QWidget, path: str, reason: str, architecture: str | None,
                      example: InputSpec | None, need_architecture: bool) -> ModelDetails | None:
    dialog = ModelDetailsDialog(parent, path, reason, architecture, example, need_architecture)
    return dialog.details if dialog.exec() == QDialog.DialogCode.Accepted else None


def ask_replace(parent: QWidget, paths: list[Path]) -> bool:
    """Consent to replace files the user already has; the default answer keeps them."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle("Replace files?")
    box.setText(f"{len(paths)} file(s) already exist where the export would write:")
    box.setInformativeText("\n".join(str(path) for path in paths))
    replace = box.addButton("Replace", QMessageBox.ButtonRole.DestructiveRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    return box.clickedButton() is replace
