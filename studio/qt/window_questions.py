"""The modal questions the main window answers for its controllers: consent, paths, details a
file cannot give, sweeps, targets, replacing files. Methods on the window (through this mixin)
so tests answer them by replacing one attribute; kept apart so the window holds layout and
wiring only."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtWidgets import QFileDialog, QMessageBox

from studio.core.engine.allocate import Target
from studio.core.models.inputs import InputSpec
from studio.qt import compress_dialogs, dialogs

if TYPE_CHECKING:
    from studio.core.workspace import Workspace


class WindowQuestions:
    """Mixed into the main window (a ``QWidget`` with ``workspace`` and
    ``selected_node_ids``)."""

    workspace: Workspace | None

    def selected_node_ids(self) -> list[int]: ...

    def confirm_trust(self, path: Path) -> bool:
        return dialogs.ask_trust(self, path)

    def confirm_architecture(self, architecture: str, file: Path) -> bool:
        """Consent to import and call a model factory that a project or recipe ``file``
        names outside the studio's registry."""
        return dialogs.ask_build_architecture(self, architecture, file)

    def confirm_function(self, function: str, file: str | None) -> bool:
        """Consent to import and run a data source function (``package.module:function``)
        defined in ``file``."""
        return dialogs.ask_run_function(self, function, file)

    def ask_details(self, path: str, reason: str, architecture: str | None,
                    example: InputSpec | None, need_architecture: bool
                    ) -> dialogs.ModelDetails | None:
        return dialogs.ask_model_details(self, path, reason, architecture, example,
                                         need_architecture)

    def ask_save_changes(self) -> QMessageBox.StandardButton:
        buttons = (QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                   | QMessageBox.StandardButton.Cancel)
        return QMessageBox.question(self, "Unsaved plan", "Save the changes to the plan first?",
                                    buttons, QMessageBox.StandardButton.Save)

    def ask_example_input(self, current: str) -> str | None:
        return compress_dialogs.ask_example_input(self, current)

    def ask_path(self, kind: str, caption: str, file_filter: str = "") -> str | None:
        """A path from a file dialog: ``kind`` is "open", "save" or "folder"."""
        if kind == "folder":
            return QFileDialog.getExistingDirectory(self, caption) or None
        chooser = QFileDialog.getSaveFileName if kind == "save" else QFileDialog.getOpenFileName
        path, _ = chooser(self, caption, "", file_filter)
        return path or None

    def confirm_replace(self, paths: list[Path]) -> bool:
        """Consent to replace files the user already has (an export's targets)."""
        return dialogs.ask_replace(self, paths)

    def ask_sweep(self, seconds: float) -> compress_dialogs.SweepChoice | None:
        """How to sweep; the prunable layers under the tree's selection are offered."""
        assert self.workspace is not None
        tree = self.workspace.tree
        selected = dict.fromkeys(node.name for i in self.selected_node_ids()
                                 for node in tree.subtree(tree.nodes[i]) if node.prunable)
        total = sum(1 for node in tree.nodes if node.prunable)
        return compress_dialogs.ask_sweep(self, seconds, list(selected), total)

    def ask_target(self, metric_label: str) -> Target | None:
        return compress_dialogs.ask_target(self, metric_label)
