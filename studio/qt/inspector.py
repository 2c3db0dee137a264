"""Edit the plan of the selected layers: sparsity, granularity, bits, exclusion, block-wise
group size, adapters and per-layer distillation.

Shows the settings in force (inherited ones in grey, with where they come from); each field has
a reset button that clears the layer's own value so it inherits again. All edits go through the
:class:`PlanController`, so they are undoable.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSlider,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from studio.core.errors import StudioError
from studio.core.graph.tree import LayerNode, LayerTree
from studio.core.methods.distill.projection import describe_projection
from studio.core.plan.channels import kept_channels
from studio.core.plan.plan import ResolvedSpec
from studio.core.plan.spec import (
    ACT_BITS,
    ADAPTER_KINDS,
    GRANULARITIES,
    MAX_SPARSITY,
    NO_MATCH,
    SAME_LAYER,
    WEIGHT_BITS,
)
from studio.core.units import format_shape
from studio.qt.plan_controller import PlanController

_GRANULARITY_LABELS = {"unstructured": "unstructured (weights)",
                       "channels": "output channels (structured)"}
_CHANNELS_BY_ROLE = {"attention": "attention heads (structured)",
                     "FFN": "FFN hidden units (structured)",
                     "encoder block": "heads and FFN units (structured)"}
"""What channel pruning removes from a transformer part (the core cuts heads, not columns)."""
GROUP_SIZES = tuple(2 ** power for power in range(4, 13))
"""The group sizes LayerSpec accepts: powers of two from 16 to 4096."""


class _FieldRow(QWidget):
    """An editor, a hint saying where the value comes from, and a reset-to-inherited button."""

    def __init__(self, editor: QWidget, on_reset: Callable[[], None]) -> None:
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(1)
        row = QHBoxLayout()
        row.addWidget(editor, 1)
        self.reset = QToolButton()
        self.reset.setText("↺")
        self.reset.setToolTip("Clear this layer's value so it inherits from its parent")
        self.reset.clicked.connect(on_reset)
        row.addWidget(self.reset)
        layout.addLayout(row)
        self.hint = QLabel()
        self.hint.setStyleSheet("color: gray; font-size: 11px;")
        layout.addWidget(self.hint)

    def show_origin(self, explicit: bool, origin: str, mixed: bool) -> None:
        self.reset.setEnabled(explicit)
        if mixed:
            self.hint.setText("mixed values across the selection")
        elif explicit:
            self.hint.setText("set here")
        else:
            self.hint.setText(f"inherited from {origin}")


class InspectorPanel(QGroupBox):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Plan", parent)
        self.controller: PlanController | None = None
        self.nodes: list[LayerNode] = []
        self._updating = False
        self._drag_token: int | None = None

        layout = QVBoxLayout(self)
        self.title = QLabel("Select layers in the tree to plan their compression.")
        self.title.setWordWrap(True)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.title)
        form = QFormLayout()
        layout.addLayout(form)
        layout.addStretch(1)

        self.sparsity_slider = QSlider(Qt.Orientation.Horizontal)
        self.sparsity_slider.setRange(0, round(MAX_SPARSITY * 100))
        self.sparsity_slider.sliderPressed.connect(self._begin_drag)
        self.sparsity_slider.sliderReleased.connect(self._end_drag)
        self.sparsity_slider.valueChanged.connect(self._slider_moved)
        self.sparsity = QDoubleSpinBox()
        self.sparsity.setRange(0.0, MAX_SPARSITY * 100)
        self.sparsity.setDecimals(1)
        self.sparsity.setSuffix(" %")
        self.sparsity.setKeyboardTracking(False)
        self.sparsity.valueChanged.connect(
            lambda value: self._edit("sparsity", round(value / 100, 4)))
        sparsity_box = QWidget()
        sparsity_layout = QHBoxLayout(sparsity_box)
        sparsity_layout.setContentsMargins(0, 0, 0, 0)
        sparsity_layout.addWidget(self.sparsity_slider, 1)
        sparsity_layout.addWidget(self.sparsity)

        self.granularity = QComboBox()
        for value in GRANULARITIES:
            label = _GRANULARITY_LABELS.get(value, f"{value} semi-structured (N:M)")
            self.granularity.addItem(label, value)
        self.granularity.activated.connect(
            lambda _i: self._edit("granularity", self.granularity.currentData()))
        self.weight_bits = QComboBox()
        for value in WEIGHT_BITS:
            self.weight_bits.addItem(value, value)
        self.weight_bits.activated.connect(
            lambda _i: self._edit("weight_bits", self.weight_bits.currentData()))
        self.act_bits = QComboBox()
        for value in ACT_BITS:
            self.act_bits.addItem(value, value)
        self.act_bits.activated.connect(
            lambda _i: self._edit("act_bits", self.act_bits.currentData()))
        self.exclude = QCheckBox("leave uncompressed")
        self.exclude.clicked.connect(lambda checked: self._edit("exclude", checked))

        self.distill_from = QComboBox()
        self.distill_from.setEditable(True)
        self.distill_from.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.distill_from.setToolTip("While distilling (Run settings ▸ distill), match this "
                                     "layer's output to a layer of the teacher (the "
                                     "uncompressed model)")
        self.distill_from.activated.connect(lambda _i: self._edit_teacher())
        self.distill_from.lineEdit().editingFinished.connect(self._edit_teacher)
        self.distill_weight = QDoubleSpinBox()
        self.distill_weight.setRange(0.0, 1000.0)
        self.distill_weight.setDecimals(2)
        self.distill_weight.setSingleStep(0.1)
        self.distill_weight.setKeyboardTracking(False)
        self.distill_weight.valueChanged.connect(
            lambda value: self._edit("distill_weight", round(value, 4)))
        self.distill_check = ""
        """The shape check of the selected layer's match, shown in its hint and tooltip."""

        self.group_size = QComboBox()
        for size in GROUP_SIZES:
            self.group_size.addItem(str(size), size)
        self.group_size.setToolTip("int4/int2 (and weight-only int8) MatMul layers: weights "
                                   "along the input sharing one scale")
        self.group_size.activated.connect(
            lambda _i: self._edit("group_size", self.group_size.currentData()))
        self.adapter = QComboBox()
        for kind in ADAPTER_KINDS:
            self.adapter.addItem(kind, kind)
        self.adapter.setToolTip("With an adapters section (Run settings): the adapter trained "
                                "on this subtree's Linear/Conv layers")
        self.adapter.activated.connect(
            lambda _i: self._edit("adapter", self.adapter.currentData()))
        self.adapter_rank = QSpinBox()
        self.adapter_rank.setRange(1, 4096)
        self.adapter_rank.setKeyboardTracking(False)
        self.adapter_rank.valueChanged.connect(lambda value: self._edit("adapter_rank", value))
        self.adapter_alpha = QDoubleSpinBox()
        self.adapter_alpha.setRange(0.01, 1e6)
        self.adapter_alpha.setDecimals(2)
        self.adapter_alpha.setKeyboardTracking(False)
        self.adapter_alpha.valueChanged.connect(
            lambda value: self._edit("adapter_alpha", round(value, 4)))
        self.adapter_dropout = QDoubleSpinBox()
        self.adapter_dropout.setRange(0.0, 0.99)
        self.adapter_dropout.setDecimals(2)
        self.adapter_dropout.setSingleStep(0.05)
        self.adapter_dropout.setKeyboardTracking(False)
        self.adapter_dropout.valueChanged.connect(
            lambda value: self._edit("adapter_dropout", round(value, 4)))

        self.rows = {
            "sparsity": _FieldRow(sparsity_box, lambda: self._edit("sparsity", None)),
            "granularity": _FieldRow(self.granularity, lambda: self._edit("granularity", None)),
            "weight_bits": _FieldRow(self.weight_bits, lambda: self._edit("weight_bits", None)),
            "act_bits": _FieldRow(self.act_bits, lambda: self._edit("act_bits", None)),
            "exclude": _FieldRow(self.exclude, lambda: self._edit("exclude", None)),
            "distill_from": _FieldRow(self.distill_from,
                                      lambda: self._edit("distill_from", None)),
            "distill_weight": _FieldRow(self.distill_weight,
                                        lambda: self._edit("distill_weight", None)),
            "group_size": _FieldRow(self.group_size, lambda: self._edit("group_size", None)),
            "adapter": _FieldRow(self.adapter, lambda: self._edit("adapter", None)),
            "adapter_rank": _FieldRow(self.adapter_rank,
                                      lambda: self._edit("adapter_rank", None)),
            "adapter_alpha": _FieldRow(self.adapter_alpha,
                                       lambda: self._edit("adapter_alpha", None)),
            "adapter_dropout": _FieldRow(self.adapter_dropout,
                                         lambda: self._edit("adapter_dropout", None)),
        }
        form.addRow("Sparsity", self.rows["sparsity"])
        form.addRow("Granularity", self.rows["granularity"])
        form.addRow("Weight bits", self.rows["weight_bits"])
        form.addRow("Activation bits", self.rows["act_bits"])
        form.addRow("Exclude", self.rows["exclude"])
        form.addRow("Distill from", self.rows["distill_from"])
        form.addRow("Distill weight", self.rows["distill_weight"])
        form.addRow("Group size", self.rows["group_size"])
        form.addRow("Adapter", self.rows["adapter"])
        form.addRow("Adapter rank", self.rows["adapter_rank"])
        form.addRow("Adapter alpha", self.rows["adapter_alpha"])
        form.addRow("Adapter dropout", self.rows["adapter_dropout"])
        self.error = QLabel()
        self.error.setStyleSheet("color: #b00020;")
        self.error.setWordWrap(True)
        layout.insertWidget(2, self.error)
        self.set_selection(None, [])

    # --- wiring ----------------------------------------------------------------------------
    def set_selection(self, controller: PlanController | None, nodes: list[LayerNode]) -> None:
        self.controller = controller
        self.nodes = nodes
        self.error.clear()
        self.refresh()

    @property
    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def refresh(self) -> None:
        """Show the settings in force on the selection."""
        enabled = self.controller is not None and bool(self.nodes)
        for row in self.rows.values():
            row.setEnabled(enabled)
        if not enabled:
            self.title.setText("Select layers in the tree to plan their compression.")
            for row in self.rows.values():
                row.hint.clear()
            return
        assert self.controller is not None
        tree = self.controller.workspace.tree
        first = self.nodes[0]
        if len(self.nodes) == 1:
            name = first.name or tree.model_name
            scope = "the whole model" if first.parent is None else first.op_type
            self.title.setText(f"<b>{name}</b> — {scope}")
        else:
            self.title.setText(f"<b>{len(self.nodes)} layers</b> selected")
        specs = [self.controller.resolved[node.id] for node in self.nodes]
        spec = specs[0]
        self._updating = True
        try:
            roles = {node.role for node in self.nodes}
            self.granularity.setItemText(
                self.granularity.findData("channels"),
                _CHANNELS_BY_ROLE.get(roles.pop() if len(roles) == 1 else None,
                                      _GRANULARITY_LABELS["channels"]))
            self.sparsity.setValue(spec.sparsity * 100)
            self.sparsity_slider.setValue(round(spec.sparsity * 100))
            self._select(self.granularity, spec.granularity)
            stored = {8: "int8", 16: "fp16"}.get(first.weight_bits or 32, "fp32")
            self._select(self.weight_bits, spec.weight_bits or stored)
            self._select(self.act_bits, spec.act_bits or "fp32")
            self.exclude.setChecked(spec.exclude)
            self._fill_teachers(tree)
            self._select_teacher(spec.distill_from)
            self.distill_weight.setValue(spec.distill_weight)
            self.group_size.setCurrentIndex(self.group_size.findData(spec.group_size))
            self._select(self.adapter, spec.adapter)
            self.adapter_rank.setValue(spec.adapter_rank)
            self.adapter_alpha.setValue(spec.adapter_alpha)
            self.adapter_dropout.setValue(spec.adapter_dropout)
            self.distill_check = self._shape_check(first, spec) if len(self.nodes) == 1 else ""
        finally:
            self._updating = False
        nm = spec.granularity not in ("unstructured", "channels")
        self.sparsity.setEnabled(not nm)
        self.sparsity_slider.setEnabled(not nm)
        for field, row in self.rows.items():
            explicit = any(not s.inherited(field, n.name) for s, n in zip(specs, self.nodes,
                                                                           strict=True))
            mixed = len({getattr(s, field) for s in specs}) > 1
            origin = spec.sources[field]
            origin_text = "the defaults" if origin is None else (origin or tree.model_name)
            row.show_origin(explicit, origin_text, mixed)
        teacher_row = self.rows["distill_from"]
        teacher_row.setToolTip(self.distill_check)
        if self.distill_check:
            teacher_row.hint.setText(f"{teacher_row.hint.text()} · {self.distill_check}")

    def _fill_teachers(self, tree: LayerTree) -> None:
        """The teacher's layers: the uncompressed model, whose tree is the one shown."""
        if self.distill_from.property("tree") == id(tree):
            return
        self.distill_from.clear()
        self.distill_from.addItem("not matched", None)
        self.distill_from.addItem("same layer in the teacher", SAME_LAYER)
        self.distill_from.addItem("none (stop an inherited match)", NO_MATCH)
        for node in tree.nodes:
            if node.parent is not None and node.output_shape is not None:
                self.distill_from.addItem(f"{node.name}  {format_shape(node.output_shape)}",
                                          node.name)
        self.distill_from.setProperty("tree", id(tree))

    def _select_teacher(self, value: str | None) -> None:
        index = self.distill_from.findData(value)
        if index < 0:  # a name from a recipe that this tree does not have
            self.distill_from.addItem(f"{value} (not in the teacher)", value)
            index = self.distill_from.count() - 1
        self.distill_from.setCurrentIndex(index)

    def _edit_teacher(self) -> None:
        """A chosen item gives its layer; typed text is taken as a layer name."""
        combo = self.distill_from
        text = combo.currentText().strip()
        index = combo.findText(text)
        value = combo.itemData(index) if index >= 0 else text.split()[0] if text else None
        if value != self.controller_value("distill_from"):
            self._edit("distill_from", value)

    def controller_value(self, field: str) -> object:
        if self.controller is None or not self.nodes:
            return None
        return getattr(self.controller.resolved[self.nodes[0].id], field)

    def _shape_check(self, node: LayerNode, spec: ResolvedSpec) -> str:
        """The student's output after the plan against the teacher layer's, and the
        projection the pair will train (the rule distillation itself uses)."""
        assert self.controller is not None
        tree = self.controller.workspace.tree
        teacher = node.name if spec.distill_from == SAME_LAYER else spec.distill_from
        if teacher in (None, NO_MATCH) or node.output_shape is None:
            return ""
        if teacher not in tree:
            return f"⚠ the teacher has no layer {teacher!r}"
        target = tree.nodes[tree.get(teacher).id].output_shape
        student = list(node.output_shape)
        if node.prunable and spec.granularity == "channels" and spec.effective_sparsity > 0:
            axis = 1 if len(student) == 4 else -1
            student[axis] = kept_channels(int(student[axis]), spec.effective_sparsity)
        if target is None or any(isinstance(d, str) for d in (*student, *target)):
            return "shapes unknown until the model runs"
        try:
            how = describe_projection(tuple(student), tuple(target))
        except StudioError as error:
            return f"⚠ {error}"
        return f"{format_shape(tuple(student))} → {format_shape(target)}: {how}"

    @staticmethod
    def _select(combo: QComboBox, value: str) -> None:
        index = combo.findData(value)
        if index < 0:  # e.g. an N:M pattern from a recipe that the list does not offer
            combo.addItem(f"{value} semi-structured (N:M)", value)
            index = combo.count() - 1
        combo.setCurrentIndex(index)

    # --- edits -----------------------------------------------------------------------------
    def _begin_drag(self) -> None:
        if self.controller is not None:
            self._drag_token = self.controller.new_merge_token()

    def _end_drag(self) -> None:
        self._drag_token = None

    def _slider_moved(self, value: int) -> None:
        if self._updating:
            return
        self._edit("sparsity", value / 100, self._drag_token)

    def _edit(self, field: str, value: object, merge_token: int | None = None) -> None:
        if self._updating or self.controller is None or not self.nodes:
            return
        try:
            self.controller.set_field(self.names, field, value, merge_token)
        except (StudioError, ValueError) as error:
            self.error.setText(str(error))
            return
        self.error.clear()
