"""The Data tab: where the task's data comes from, how it is split and what the metric is.

A compact form over the recipe's :class:`DataSection`. Every edit is validated by the schema
itself; a value it refuses is named in red under the form (and its field is outlined), never
raised, and only valid sections leave the panel through :attr:`DataPanel.edited`. The panel
knows nothing of workspaces or files: the :class:`~studio.qt.data_controller.DataController`
browses, stores and checks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml
from pydantic import ValidationError
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from studio.core.plan.stages import DataSection
from studio.qt.form_validation import INVALID_STYLE, emit_if_valid, first_problem, problem_label

SOURCES = {
    "demo": "Built-in demo digits",
    "images": "Image folder (a sub-folder per class)",
    "arrays": "Arrays (.npz / .npy)",
    "csv": "CSV file",
    "function": "Python function",
    "text": "Text (.txt / .jsonl) for a causal LM",
}
METRICS = {
    "auto": "auto: accuracy with labels, else MSE or cosine by the output",
    "accuracy": "accuracy (needs labels)",
    "cosine": "cosine agreement with the original",
    "top1_agreement": "top-1 agreement with the original",
    "mse": "MSE against the original",
    "perplexity": "perplexity (causal LMs on text; lower is better)",
}
PATH_HINTS = {
    "images": "folder with one sub-folder per class (or unlabelled images)",
    "arrays": "file.npz (inputs, optional labels) or inputs.npy",
    "csv": "file.csv with numeric columns",
    "function": "package.module:function returning batches",
    "text": ".txt or .jsonl file, or a folder of them",
}


def _floats(text: str) -> list[float] | str:
    """``"0.5, 0.5"`` → ``[0.5, 0.5]``; the raw text when it is not numbers (the schema then
    names the field)."""
    try:
        return [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        return text


def _number_list(values: list[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _keys(text: str) -> str | list[str] | None:
    """``"input, state"`` → ``["input", "state"]`` (several named inputs); one name stays a
    name, and nothing means "not set"."""
    names = [part.strip() for part in text.split(",")]
    return names if len(names) > 1 else (names[0] or None)


def _constants(text: str) -> dict[str, Any] | str:
    """``"sr: 16000, window: [1, 2]"`` → a mapping, read as a YAML flow mapping (safe: plain
    data only); the raw text when it is not one, so the schema names the field."""
    if not text.strip():
        return {}
    try:
        value = yaml.safe_load("{" + text + "}")
    except yaml.YAMLError:
        return text
    return value if isinstance(value, dict) else text


def _constants_text(constants: dict[str, Any]) -> str:
    return ", ".join(f"{name}: {json.dumps(value)}" for name, value in constants.items())


def describe_problem(error: ValidationError) -> tuple[str, str]:
    """(field, sentence) for the first thing the schema refused, as the user named it."""
    location, message = first_problem(error, lambda _location: "")  # no patterns here
    field = ".".join(str(part) for part in location)
    if error.errors()[0]["type"] == "list_type" and field.startswith("image."):
        message = f"{field}: give numbers separated by commas, one per channel or one for all"
    if not field and "needs path" in message:  # the section's own check: outline the path
        return "path", message
    return field, message


class _PathRow(QWidget):
    """A line edit with a Browse… button beside it."""

    def __init__(self, on_browse: Callable[[], None]) -> None:
        super().__init__()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.edit = QLineEdit()
        self.edit.setClearButtonEnabled(True)
        self.browse = QPushButton("Browse…")
        self.browse.clicked.connect(on_browse)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.browse)


class DataPanel(QWidget):
    """Source, path and per-source options on the left; labels, metric and splits in the
    middle; "Check data" and what it found on the right."""

    edited = Signal(object)
    """A valid :class:`DataSection`, or ``None`` when the form holds the default (demo data)."""
    browseRequested = Signal(str)
    """``"path"`` or ``"test_path"``: the user wants a file or folder dialog for that field."""
    checkRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._loading = False
        self._labelled_checked: bool | None = None
        """What a ticked "use labels" means: None (when present), or True from a recipe."""
        self._build()
        self.set_section(None)
        self.setEnabled(False)

    # --- layout ----------------------------------------------------------------------------
    def _build(self) -> None:
        self.source = QComboBox()
        for key, label in SOURCES.items():
            self.source.addItem(label, key)
        self.path_row = _PathRow(lambda: self.browseRequested.emit("path"))
        self.path = self.path_row.edit
        self.resize_box = QCheckBox("resize to")
        self.height = self._spin(1, 4096, 28)
        self.width = self._spin(1, 4096, 28)
        size = QWidget()
        size_layout = QHBoxLayout(size)
        size_layout.setContentsMargins(0, 0, 0, 0)
        for widget in (self.resize_box, self.height, QLabel("×"), self.width):
            size_layout.addWidget(widget)
        size_layout.addStretch(1)
        self.channels = QComboBox()
        self.channels.addItem("RGB (3 channels)", 3)
        self.channels.addItem("greyscale (1 channel)", 1)
        self.mean = QLineEdit()
        self.mean.setPlaceholderText("0.485, 0.456, 0.406 (or one value)")
        self.std = QLineEdit()
        self.std.setPlaceholderText("0.229, 0.224, 0.225 (or one value)")
        self.inputs_key = QLineEdit()
        self.inputs_key.setPlaceholderText("auto: x, inputs, images, input_ids or data")
        self.inputs_key.setToolTip("Several names (input, state) feed an ONNX file's inputs "
                                   "of the same names")
        self.constants = QLineEdit()
        self.constants.setPlaceholderText("ONNX inputs fed alike every batch, e.g. sr: 16000")
        self.labels_key = QLineEdit()
        self.labels_key.setPlaceholderText("auto: y, labels or targets if present")
        self.label_column = QLineEdit()
        self.label_column.setPlaceholderText("none: the rows are unlabelled")
        self.max_samples = self._spin(1, 10_000_000, 50_000)
        self.max_samples.setSuffix(" samples at most")
        self.max_samples.setToolTip("Stop reading the function's batches (or the text's "
                                    "blocks) after this many")
        self.block_length = self._spin(2, 32_768, 128)
        self.block_length.setSuffix(" tokens per block")
        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("the prompt both models continue in the report")
        self.generate_tokens = self._spin(0, 512, 20)
        self.generate_tokens.setSuffix(" tokens generated")

        source_box = QGroupBox("Source")
        self.source_form = QFormLayout(source_box)
        self.source_form.addRow("Source", self.source)
        self.source_form.addRow("Path", self.path_row)
        self.source_form.addRow("Image size", size)
        self.source_form.addRow("Colour", self.channels)
        self.source_form.addRow("Mean", self.mean)
        self.source_form.addRow("Std", self.std)
        self.source_form.addRow("Inputs key", self.inputs_key)
        self.source_form.addRow("Labels key", self.labels_key)
        self.source_form.addRow("Constant inputs", self.constants)
        self.source_form.addRow("Label column", self.label_column)
        self.source_form.addRow("Read", self.max_samples)
        self.source_form.addRow("Blocks", self.block_length)
        self.source_form.addRow("Prompt", self.prompt)
        self.source_form.addRow("Sample", self.generate_tokens)
        self._source_rows = {
            "path": ("images", "arrays", "csv", "function", "text"),
            "size": ("images",), "channels": ("images",), "mean": ("images",),
            "std": ("images",), "inputs_key": ("arrays",), "labels_key": ("arrays",),
            "label_column": ("csv",), "max_samples": ("function", "text"),
            "block_length": ("text",), "prompt": ("text",), "generate_tokens": ("text",),
        }

        self.use_labels = QCheckBox("use labels when the data has them")
        self.metric = QComboBox()
        for key, label in METRICS.items():
            self.metric.addItem(label, key)
        self.test_row = _PathRow(lambda: self.browseRequested.emit("test_path"))
        self.test_path = self.test_row.edit
        self.test_path.setPlaceholderText("optional: separate test data")
        self.test_path.setToolTip("A separate test set of the same kind; without it the "
                                  "test split is held out of the data")
        self.test_fraction = QDoubleSpinBox()
        self.test_fraction.setRange(1.0, 99.0)
        self.test_fraction.setDecimals(0)
        self.test_fraction.setSuffix(" % held out")
        self.split_seed = self._spin(0, 2**31 - 1, 0)
        self.calibration = self._spin(1, 100_000, 256)
        self.calibration.setSuffix(" samples")
        self.train_samples = self._spin(0, 10_000_000, 0)
        self.train_samples.setSpecialValueText("all")
        self.train_samples.setSuffix(" samples")
        self.train_samples.setToolTip("Fine-tune on the first N training samples (all: 0)")
        self.validation_samples = self._spin(0, 10_000_000, 0)
        self.validation_samples.setSpecialValueText("the test split")
        self.validation_samples.setSuffix(" samples")
        self.validation_samples.setToolTip(
            "Score on the last N training samples, kept out of fine-tuning and calibration, "
            "instead of the test split: what a search selects on (the test split: 0)")

        split_box = QGroupBox("Labels, metric and splits")
        self.split_form = QFormLayout(split_box)
        self.split_form.addRow("Labels", self.use_labels)
        self.split_form.addRow("Metric", self.metric)
        self.split_form.addRow("Test set", self.test_row)
        self.split_form.addRow("Test split", self.test_fraction)
        self.split_form.addRow("Split seed", self.split_seed)
        self.split_form.addRow("Calibration", self.calibration)
        self.split_form.addRow("Fine-tune on", self.train_samples)
        self.split_form.addRow("Score on", self.validation_samples)

        self.check_button = QPushButton("Check data")
        self.check_button.setToolTip("Load the data in the background and show what it holds")
        self.check_button.clicked.connect(self.checkRequested)
        self.check_result = QLabel("Check the data to see its splits and shapes.")
        self.check_result.setWordWrap(True)
        self.check_result.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.check_result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        check_box = QGroupBox("What the data holds")
        check_layout = QVBoxLayout(check_box)
        check_layout.addWidget(self.check_button, 0, Qt.AlignmentFlag.AlignLeft)
        check_layout.addWidget(self.check_result, 1)

        self.error = problem_label()
        columns = QHBoxLayout()
        columns.addWidget(source_box, 5)
        columns.addWidget(split_box, 4)
        columns.addWidget(check_box, 4)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(columns)
        layout.addWidget(self.error)
        layout.addStretch(1)

        self._fields: dict[str, QWidget] = {
            "source": self.source, "path": self.path, "test_path": self.test_path,
            "inputs_key": self.inputs_key, "labels_key": self.labels_key,
            "constants": self.constants,
            "label_column": self.label_column, "metric": self.metric,
            "test_fraction": self.test_fraction, "split_seed": self.split_seed,
            "calibration_samples": self.calibration, "train_samples": self.train_samples,
            "validation_samples": self.validation_samples, "max_samples": self.max_samples,
            "block_length": self.block_length,
            "prompt": self.prompt, "generate_tokens": self.generate_tokens,
            "image.size": self.height, "image.mean": self.mean, "image.std": self.std,
        }
        for combo in (self.source, self.channels, self.metric):
            combo.currentIndexChanged.connect(self._changed)
        for edit in (self.path, self.test_path, self.mean, self.std, self.inputs_key,
                     self.labels_key, self.label_column, self.constants, self.prompt):
            edit.textChanged.connect(self._changed)
        for spin in (self.height, self.width, self.test_fraction, self.split_seed,
                     self.calibration, self.train_samples, self.validation_samples,
                     self.max_samples,
                     self.block_length, self.generate_tokens):
            spin.valueChanged.connect(self._changed)
        for box in (self.resize_box, self.use_labels):
            box.toggled.connect(self._changed)

    @staticmethod
    def _spin(low: int, high: int, value: int) -> QSpinBox:
        spin = QSpinBox()
        spin.setRange(low, high)
        spin.setValue(value)
        spin.setGroupSeparatorShown(True)
        return spin

    # --- form ↔ section --------------------------------------------------------------------
    def set_section(self, section: DataSection | None) -> None:
        """Show ``section`` (``None``: the defaults) without emitting :attr:`edited`."""
        section = section or DataSection()
        image = section.image
        self._loading = True
        try:
            self.source.setCurrentIndex(self.source.findData(section.source))
            self.path.setText(section.path or "")
            self.test_path.setText(section.test_path or "")
            keys = section.inputs_key
            self.inputs_key.setText(", ".join(keys) if isinstance(keys, list) else keys or "")
            self.constants.setText(_constants_text(section.constants))
            self.labels_key.setText(section.labels_key or "")
            self.label_column.setText(section.label_column or "")
            self.use_labels.setChecked(section.labelled is not False)
            self._labelled_checked = True if section.labelled else None
            self.metric.setCurrentIndex(self.metric.findData(section.metric))
            self.test_fraction.setValue(section.test_fraction * 100)
            self.split_seed.setValue(section.split_seed)
            self.calibration.setValue(section.calibration_samples)
            self.train_samples.setValue(section.train_samples or 0)
            self.validation_samples.setValue(section.validation_samples or 0)
            self.max_samples.setValue(section.max_samples)
            self.block_length.setValue(section.block_length)
            self.prompt.setText(section.prompt)
            self.generate_tokens.setValue(section.generate_tokens)
            self.resize_box.setChecked(image.size is not None)
            if image.size is not None:
                self.height.setValue(image.size[0])
                self.width.setValue(image.size[1])
            self.channels.setCurrentIndex(self.channels.findData(image.channels))
            self.mean.setText(_number_list(image.mean))
            self.std.setText(_number_list(image.std))
        finally:
            self._loading = False
        self._show_problem(None)
        self._update_visibility()

    def values(self) -> dict[str, Any]:
        """The form as the data the schema validates (text fields left empty mean "not set")."""
        def text(edit: QLineEdit) -> str | None:
            return edit.text().strip() or None

        values: dict[str, Any] = {
            "source": self.source.currentData(), "path": text(self.path),
            "test_path": text(self.test_path), "inputs_key": _keys(self.inputs_key.text()),
            "constants": _constants(self.constants.text()),
            "labels_key": text(self.labels_key), "label_column": text(self.label_column),
            "labelled": self._labelled_checked if self.use_labels.isChecked() else False,
            "metric": self.metric.currentData(),
            "test_fraction": round(self.test_fraction.value() / 100, 4),
            "split_seed": self.split_seed.value(),
            "calibration_samples": self.calibration.value(),
            "train_samples": self.train_samples.value() or None,
            "validation_samples": self.validation_samples.value() or None,
            "max_samples": self.max_samples.value(),
            "block_length": self.block_length.value(),
            "prompt": self.prompt.text() or DataSection().prompt,
            "generate_tokens": self.generate_tokens.value(),
        }
        if values["source"] == "images":
            values["image"] = {
                "size": (self.height.value(), self.width.value())
                if self.resize_box.isChecked() else None,
                "channels": self.channels.currentData(),
                "mean": _floats(self.mean.text()), "std": _floats(self.std.text())}
        return values

    def section(self) -> DataSection | None:
        """The form's section, or ``None`` for the defaults; raises ``ValidationError``."""
        section = DataSection.model_validate(self.values())
        return None if section == DataSection() else section

    def _changed(self, *_args: object) -> None:
        if self._loading:
            return
        self._update_visibility()
        emit_if_valid(self.section, self._show_problem, self.edited)

    def _show_problem(self, error: ValidationError | None) -> None:
        field, message = describe_problem(error) if error is not None else ("", "")
        self.error.setText(message)
        for name, widget in self._fields.items():
            widget.setStyleSheet(INVALID_STYLE if name == field else "")

    @property
    def problem(self) -> str:
        """The inline message shown now ("" when the form is valid)."""
        return self.error.text()

    def _update_visibility(self) -> None:
        source = self.source.currentData()
        widgets = {"path": self.path_row, "size": self.height.parentWidget(),
                   "channels": self.channels, "mean": self.mean, "std": self.std,
                   "inputs_key": self.inputs_key, "labels_key": self.labels_key,
                   "label_column": self.label_column, "max_samples": self.max_samples,
                   "block_length": self.block_length, "prompt": self.prompt,
                   "generate_tokens": self.generate_tokens}
        for key, widget in widgets.items():
            self.source_form.setRowVisible(widget, source in self._source_rows[key])
        self.split_form.setRowVisible(self.test_row, source not in ("demo", "function"))
        self.split_form.setRowVisible(self.test_fraction, source != "demo")
        self.split_form.setRowVisible(self.split_seed, source != "demo")
        self.path_row.browse.setVisible(source != "function")
        self.test_fraction.setEnabled(not self.test_path.text().strip())
        self.height.setEnabled(self.resize_box.isChecked())
        self.width.setEnabled(self.resize_box.isChecked())
        self.path.setPlaceholderText(PATH_HINTS.get(source, ""))

    # --- from the controller ---------------------------------------------------------------
    def set_path(self, which: str, path: str) -> None:
        """A browsed path, entered as if typed (so it is validated and stored)."""
        (self.path if which == "path" else self.test_path).setText(path)

    def show_check(self, html: str, ok: bool = True) -> None:
        """What "Check data" found (``ok=False``: why it could not load, in red)."""
        self.check_result.setStyleSheet("" if ok else "color: #b00020;")
        self.check_result.setText(html)

    @property
    def check_text(self) -> str:
        return self.check_result.text()

