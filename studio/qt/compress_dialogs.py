"""Real dialogs for the compression questions: how to sweep sensitivity (granularity, levels,
bit-widths, samples, which layers, with the time it should take), which target to allocate to,
and the example input to trace on. Each checks its fields as they are typed and names what is
wrong beside them, so OK only accepts what the engine will take."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from studio.core.engine.allocate import Target
from studio.core.engine.sensitivity import DEFAULT_BITS, DEFAULT_SPARSITY, GRANULARITIES
from studio.core.errors import StudioError
from studio.core.models.inputs import InputSpec

DEFAULT_SUBSET = 500
"""The samples the sweep's time was measured for."""


@dataclass(frozen=True)
class SweepChoice:
    """What to sweep: the keyword arguments of the sensitivity job."""

    granularity: str = "unstructured"
    sparsity_levels: tuple[float, ...] = DEFAULT_SPARSITY
    bit_levels: tuple[str, ...] = DEFAULT_BITS
    subset: int = DEFAULT_SUBSET
    layers: tuple[str, ...] = field(default_factory=tuple)
    """Empty: every layer."""

    def options(self) -> dict[str, object]:
        chosen: dict[str, object] = {"granularity": self.granularity,
                                     "sparsity_levels": list(self.sparsity_levels),
                                     "bit_levels": list(self.bit_levels), "subset": self.subset}
        return chosen | ({"layers": list(self.layers)} if self.layers else {})


def parse_levels(text: str) -> tuple[float, ...]:
    """``"0.25, 0.5 75%"`` -> (0.25, 0.5, 0.75); raises :class:`StudioError` naming the bad
    entry."""
    levels = []
    for part in text.replace(";", ",").replace(" ", ",").split(","):
        if not part:
            continue
        try:
            value = float(part[:-1]) / 100 if part.endswith("%") else float(part)
        except ValueError:
            raise StudioError(f"sparsity level {part!r} is not a number") from None
        if not 0.0 < value < 1.0:
            raise StudioError(f"sparsity level {part} must lie between 0 and 1 (or 0–100%)")
        levels.append(value)
    if not levels:
        raise StudioError("give at least one sparsity level, e.g. 0.25, 0.5, 0.75")
    return tuple(sorted(set(levels)))


class _CheckedDialog(QDialog):
    """OK enabled only while :meth:`problem` says nothing; the problem shows in red."""

    def __init__(self, parent: QWidget | None, title: str) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.form = QFormLayout()
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(self.form)
        layout.addWidget(self.message)
        layout.addWidget(self.buttons)

    def problem(self) -> str | None:
        raise NotImplementedError

    def hint(self) -> str:
        return ""

    def check(self, *_args: object) -> None:
        problem = self.problem()
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(problem is None)
        self.message.setStyleSheet("color: #b00020;" if problem else "color: #444;")
        self.message.setText(problem or self.hint())


class SweepDialog(_CheckedDialog):
    def __init__(self, parent: QWidget | None, seconds: float, selected: Sequence[str] = (),
                 total: int = 1) -> None:
        """``seconds``: the default sweep's time (every layer, default levels, 500 samples);
        ``selected``: the prunable layers selected in the tree, offered as the sweep's layers,
        out of ``total``."""
        super().__init__(parent, "Sensitivity analysis")
        self.seconds = seconds
        self.selected = tuple(selected)
        self.total = max(1, total)
        self.granularity = QComboBox()
        for name in GRANULARITIES:
            self.granularity.addItem("output channels (structured)" if name == "channels"
                                     else "single weights (unstructured)", name)
        self.levels = QLineEdit(", ".join(f"{level:g}" for level in DEFAULT_SPARSITY))
        self.bits = {name: QCheckBox(name) for name in DEFAULT_BITS}
        bits_row = QHBoxLayout()
        for box in self.bits.values():
            box.setChecked(True)
            bits_row.addWidget(box)
        self.samples = QSpinBox()
        self.samples.setRange(10, 100_000)
        self.samples.setValue(DEFAULT_SUBSET)
        self.samples.setSuffix(" test samples")
        self.all_layers = QRadioButton("every layer")
        self.some_layers = QRadioButton(f"the {len(self.selected)} selected in the tree")
        self.some_layers.setEnabled(bool(self.selected))
        self.all_layers.setChecked(True)
        scope = QButtonGroup(self)
        layers_row = QHBoxLayout()
        for button in (self.all_layers, self.some_layers):
            scope.addButton(button)
            layers_row.addWidget(button)
        self.form.addRow("Prune each layer by", self.granularity)
        self.form.addRow("Sparsity levels", self.levels)
        self.form.addRow("Weight bits", bits_row)
        self.form.addRow("Measure on", self.samples)
        self.form.addRow("Layers", layers_row)
        for signal in (self.levels.textChanged, self.samples.valueChanged,
                       self.all_layers.toggled, *(b.toggled for b in self.bits.values())):
            signal.connect(self.check)
        self.check()

    def choice(self) -> SweepChoice:
        return SweepChoice(self.granularity.currentData(), parse_levels(self.levels.text()),
                           tuple(name for name, box in self.bits.items() if box.isChecked()),
                           self.samples.value(),
                           () if self.all_layers.isChecked() else self.selected)

    def problem(self) -> str | None:
        try:
            self.choice()
        except StudioError as error:
            return str(error)
        return None

    def hint(self) -> str:
        choice = self.choice()
        cells = len(choice.sparsity_levels) + len(choice.bit_levels)
        share = len(choice.layers) / self.total if choice.layers else 1.0
        seconds = self.seconds * cells / (len(DEFAULT_SPARSITY) + len(DEFAULT_BITS)) \
            * choice.subset / DEFAULT_SUBSET * share
        scope = f"{len(choice.layers)} layers" if choice.layers else "every layer"
        return (f"About {seconds:.0f} s for {scope}; it runs in the background and the status "
                "bar shows its progress.")


TARGETS = (("size", "Size", "keep at most this fraction of the original bytes", 0.25),
           ("macs", "MACs", "keep at most this fraction of the original MACs", 0.5),
           ("accuracy_drop", "Metric drop", "lose at most this many points", 0.5))


class TargetDialog(_CheckedDialog):
    def __init__(self, parent: QWidget | None, metric_label: str) -> None:
        super().__init__(parent, "Allocate to a target")
        self.metric_label = metric_label
        self.kind = QComboBox()
        for kind, label, _meaning, default in TARGETS:
            self.kind.addItem(f"{metric_label} drop" if kind == "accuracy_drop" else label,
                              (kind, default))
        self.value = QDoubleSpinBox()
        self.value.setDecimals(3)
        self.value.setRange(0.0, 100.0)
        self.value.setSingleStep(0.05)
        self.kind.currentIndexChanged.connect(self._kind_changed)
        self.value.valueChanged.connect(self.check)
        self.form.addRow("Target", self.kind)
        self.form.addRow("Value", self.value)
        self._kind_changed()

    def _kind_changed(self, *_args: object) -> None:
        kind, default = self.kind.currentData()
        self.value.setSuffix(" points" if kind == "accuracy_drop" else " × original")
        self.value.setValue(default)
        self.check()

    def target(self) -> Target:
        return Target(self.kind.currentData()[0], self.value.value())

    def problem(self) -> str | None:
        try:
            self.target()
        except StudioError as error:
            return str(error)
        return None

    def hint(self) -> str:
        kind = self.kind.currentData()[0]
        meaning = next(m for k, _label, m, _d in TARGETS if k == kind)
        return (f"The plan will {meaning}, spending the budget where the sensitivity sweep "
                "says it costs least; layers you set yourself stay as they are.")


class ExampleInputDialog(_CheckedDialog):
    def __init__(self, parent: QWidget | None, current: str) -> None:
        super().__init__(parent, "Example input")
        shape, _, dtype = current.partition(":")
        self.shape = QLineEdit(shape)
        self.shape.setPlaceholderText("e.g. 1, 3, 224, 224")
        self.dtype = QComboBox()
        self.dtype.addItem("float32 (images, features)", "float32")
        self.dtype.addItem("int64 (token ids)", "int64")
        self.dtype.setCurrentIndex(max(0, self.dtype.findData(dtype or "float32")))
        self.form.addRow("Shape, batch first", self.shape)
        self.form.addRow("Type", self.dtype)
        self.shape.textChanged.connect(self.check)
        self.check()

    def text(self) -> str:
        dtype = self.dtype.currentData()
        return self.shape.text().strip() + ("" if dtype == "float32" else f":{dtype}")

    def problem(self) -> str | None:
        try:
            InputSpec.parse(self.text())
        except StudioError as error:
            return str(error)
        return None

    def hint(self) -> str:
        return ("The model is traced on one input of this shape to find every layer's output "
                "shape and MACs; the plan is kept.")


def ask_sweep(parent: QWidget, seconds: float, selected: Sequence[str] = (), total: int = 1
              ) -> SweepChoice | None:
    dialog = SweepDialog(parent, seconds, selected, total)
    return dialog.choice() if dialog.exec() == QDialog.DialogCode.Accepted else None


def ask_target(parent: QWidget, metric_label: str) -> Target | None:
    dialog = TargetDialog(parent, metric_label)
    return dialog.target() if dialog.exec() == QDialog.DialogCode.Accepted else None


def ask_example_input(parent: QWidget, current: str) -> str | None:
    dialog = ExampleInputDialog(parent, current)
    return dialog.text() if dialog.exec() == QDialog.DialogCode.Accepted else None
