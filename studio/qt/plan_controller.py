"""Every plan edit goes through here, as an undoable command, so the GUI has one source of truth.

The controller owns the workspace's plan and its resolved (inherited) view, and the job sections
saved with it (data, train, …); views listen to ``planChanged`` / ``stagesChanged`` and never
edit either themselves.
"""

from __future__ import annotations

from pydantic import BaseModel
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack

from studio.core.plan import LayerSpec, Plan, ResolvedSpec
from studio.core.plan.recipe import STAGE_KEYS
from studio.core.plan.schema import is_opt_in
from studio.core.workspace import Workspace


class SetSpecsCommand(QUndoCommand):
    """Replace the specs of some layers; undo puts the previous specs back."""

    def __init__(self, controller: PlanController, before: dict[str, LayerSpec],
                 after: dict[str, LayerSpec], text: str, merge_token: int | None = None) -> None:
        super().__init__(text)
        self.controller = controller
        self.before = before
        self.after = after
        self.merge_token = merge_token

    def id(self) -> int:
        return 1 if self.merge_token is not None else -1

    def mergeWith(self, other: QUndoCommand) -> bool:
        """Slider drags arrive as many small edits; fold them into one undo step."""
        if not isinstance(other, SetSpecsCommand) or other.merge_token != self.merge_token \
                or other.after.keys() != self.after.keys():
            return False
        self.after = other.after
        return True

    def redo(self) -> None:
        self.controller.apply_specs(self.after)

    def undo(self) -> None:
        self.controller.apply_specs(self.before)


PRESENCE = "<section>"
"""Marks an edit that adds or removes a whole section (an opt-in section ticked on or off)."""


def _changed_fields(before: BaseModel | None, after: BaseModel | None) -> frozenset[str]:
    """The fields an edit changes; an absent section counts as its defaults (and, for an
    opt-in section, adding or removing it is a change of its own)."""
    model = type(after if after is not None else before)
    old = (before or model()).model_dump()
    new = (after or model()).model_dump()
    changed = {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}
    if is_opt_in(model) and (before is None) != (after is None):
        changed.add(PRESENCE)
    return frozenset(changed)


class SetStageCommand(QUndoCommand):
    """Replace one job section (``workspace.stages[key]``; ``None`` removes it)."""

    def __init__(self, controller: PlanController, key: str, before: BaseModel | None,
                 after: BaseModel | None) -> None:
        super().__init__(f"Edit {key} settings")
        self.controller = controller
        self.key = key
        self.before = before
        self.after = after
        self.fields = _changed_fields(before, after)

    def id(self) -> int:
        return 2

    def mergeWith(self, other: QUndoCommand) -> bool:
        """Typing in one field is one undo step; a different field starts a new one."""
        if not isinstance(other, SetStageCommand) or other.key != self.key \
                or other.fields != self.fields:
            return False
        self.after = other.after
        self.setObsolete(self.after == self.before)  # typed back to where it was: no step
        return True

    def redo(self) -> None:
        self.controller.apply_stage(self.key, self.after)

    def undo(self) -> None:
        self.controller.apply_stage(self.key, self.before)


class PlanController(QObject):
    planChanged = Signal(list)
    """Names of the layers whose own spec changed (descendants may inherit the change)."""
    stagesChanged = Signal(str)
    """The key of the job section that changed (``"data"``, ``"train"``, …)."""

    def __init__(self, workspace: Workspace, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.undo_stack = QUndoStack(self)
        self.resolved: list[ResolvedSpec] = workspace.plan.resolve(workspace.tree)
        self._merge_token = 0

    @property
    def plan(self) -> Plan:
        return self.workspace.plan

    def new_merge_token(self) -> int:
        """Start a run of edits (a slider drag) that undo treats as one."""
        self._merge_token += 1
        return self._merge_token

    def set_field(self, names: list[str], field: str, value: object,
                  merge_token: int | None = None) -> None:
        """Set ``field`` on every named layer (``None`` clears it, so it inherits again)."""
        before = {name: self.plan.spec(name) for name in names}
        after = {}
        for name, spec in before.items():
            values = spec.model_dump()
            values[field] = value
            after[name] = LayerSpec.model_validate(values)
        if after == before:
            return
        label = field.replace("_", " ")
        target = names[0] or self.workspace.tree.model_name if len(names) == 1 \
            else f"{len(names)} layers"
        shown = "inherited" if value is None else value
        self.undo_stack.push(SetSpecsCommand(self, before, after,
                                             f"Set {label} of {target} to {shown}", merge_token))

    def replace_plan(self, plan: Plan, text: str) -> None:
        """Swap in a whole plan (an imported recipe) as one undoable step."""
        names = set(self.plan.specs) | set(plan.specs)
        before = {name: self.plan.spec(name) for name in names}
        after = {name: plan.spec(name) for name in names}
        self.undo_stack.push(SetSpecsCommand(self, before, after, text))

    def replace_recipe(self, plan: Plan, stages: dict[str, BaseModel], text: str) -> None:
        """Swap in a whole plan and every job section (an imported recipe, an experiment, an
        autosave) as one undoable step; sections absent from ``stages`` are removed."""
        if plan == self.plan and all(stages.get(key) == self.workspace.stages.get(key)
                                     for key in STAGE_KEYS):
            return
        self.undo_stack.beginMacro(text)
        if plan != self.plan:
            self.replace_plan(plan, text)
        for key in STAGE_KEYS:
            self.set_stage(key, stages.get(key))
        self.undo_stack.endMacro()

    def apply_specs(self, specs: dict[str, LayerSpec]) -> None:
        for name, spec in specs.items():
            self.plan.set_spec(name, spec)
        self.resolved = self.plan.resolve(self.workspace.tree)
        self.planChanged.emit(list(specs))

    def set_stage(self, key: str, section: BaseModel | None) -> None:
        """Set a job section of the workspace (``None`` removes it) as an undoable edit."""
        before = self.workspace.stages.get(key)
        if before == section:
            return
        self.undo_stack.push(SetStageCommand(self, key, before, section))

    def apply_stage(self, key: str, section: BaseModel | None) -> None:
        if section is None:
            self.workspace.stages.pop(key, None)
        else:
            self.workspace.stages[key] = section
        self.stagesChanged.emit(key)
