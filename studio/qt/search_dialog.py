"""The Search dialog: the search's settings as a form generated from
:class:`~studio.core.search.settings.SearchSettings` (objectives, constraints, budget, the
layers and choices searched, fidelity, where it runs), with an estimate of the time it takes
that follows every edit."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QScrollArea, QVBoxLayout, QWidget

from studio.core.search.settings import SearchSettings
from studio.qt.schema_form import SchemaForm


def say_duration(seconds: float) -> str:
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


class SearchDialog(QDialog):
    def __init__(self, settings: SearchSettings, estimate: Callable[[SearchSettings], float],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Search plans")
        self.estimate = estimate
        layout = QVBoxLayout(self)
        intro = QLabel("Every trial is scored on a validation split carved from the training "
                       "data; the most promising run the whole plan (recovery, export, "
                       "onnxruntime timing) and are saved as experiments. Space 'subnet' "
                       "first trains the model once as a supernet of elastic widths and "
                       "depths, then searches its subnets without retraining each.")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.form = SchemaForm(SearchSettings)
        self.form.set_value(settings)
        scroll = QScrollArea()
        scroll.setWidget(self.form)
        scroll.setWidgetResizable(True)
        layout.addWidget(scroll, 1)
        self.estimate_label = QLabel()
        self.estimate_label.setObjectName("estimate")
        layout.addWidget(self.estimate_label)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Start search")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.form.touched.connect(self._update)
        self.resize(560, 640)
        self._update()

    def settings(self) -> SearchSettings | None:
        try:
            return SearchSettings.model_validate(self.form.values())
        except ValidationError:
            return None

    def _update(self) -> None:
        settings = self.settings()
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setEnabled(settings is not None)
        if settings is None:
            self.estimate_label.setText("Fix the settings named above to see an estimate.")
            return
        self.estimate_label.setText(f"Estimated time: {say_duration(self.estimate(settings))} "
                                    f"for {settings.trials} trials")
