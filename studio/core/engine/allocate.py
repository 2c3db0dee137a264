"""Target-driven allocation: per-layer sparsity and bit-widths proposed from a sensitivity report.

The user gives one global target — a size or MAC budget as a fraction of the original, or a
largest accuracy drop — and :func:`allocate` returns an ordinary, editable :class:`Plan`.

The method is greedy. Every layer starts uncompressed; each round takes the step (a layer, or
for channel sweeps a whole dependency group, moved to a higher sparsity level or a lower
bit-width) with the largest saving per unit of predicted accuracy drop, until the target is
met or no step is left. Savings come from :func:`studio.core.plan.estimate.estimate` of the
real plan (dense bytes for size, MACs for macs), so they are exactly what the plan's estimate
will say. The predicted drop is a **first-order assumption**: the single-layer drops measured
by the sweep are summed across layers and across the two sweeps, as if their effects were
independent and additive. Real drops of several layers at once are often larger; evaluate (or
fine-tune) the proposed plan before trusting it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from studio.core.errors import StudioError
from studio.core.graph.tree import LayerTree
from studio.core.plan.estimate import Estimate, estimate
from studio.core.plan.plan import Plan
from studio.core.plan.spec import LayerSpec
from studio.core.reports.sensitivity_report import SensitivityReport

TargetKind = Literal["size", "macs", "accuracy_drop"]
_EPSILON = 1e-4
"""Drop charged to a step whose measured drop is zero or negative (noise), so that among free
steps the largest saving still goes first."""


@dataclass(frozen=True)
class Target:
    """``size``/``macs``: the most the result may keep, as a fraction of the original (0.25 is
    a quarter). ``accuracy_drop``: the most accuracy the plan may lose, in points (0.5 is half
    a percent; with an agreement metric, 0.5 points is 0.005 of it); the plan then saves as
    many bytes as that allows."""

    kind: TargetKind
    value: float

    def __post_init__(self) -> None:
        if self.kind not in ("size", "macs", "accuracy_drop"):
            raise StudioError(f"target {self.kind!r}: use size, macs or accuracy_drop")
        if self.kind != "accuracy_drop" and not 0.0 < self.value <= 1.0:
            raise StudioError(f"a {self.kind} target is a fraction of the original, between 0 "
                              f"and 1 (0.25 = a quarter); got {self.value}")
        if self.kind == "accuracy_drop" and self.value < 0.0:
            raise StudioError("an accuracy-drop target is a number of points, 0 or more")


@dataclass
class Allocation:
    plan: Plan
    estimate: Estimate
    chosen: dict[str, tuple[float, str | None]]
    """Layer -> (sparsity, weight bits or None) the allocation set; pinned layers are absent."""
    predicted_drop: float
    """Sum of the single-layer drops of the chosen levels (a fraction: 0.01 = one point)."""
    met: bool
    notes: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    """The steps in the order taken, e.g. ``sparsity 0.5 res.conv2``: the least sensitive first."""

    def ratio(self, target: Target | str) -> float:
        kind = target.kind if isinstance(target, Target) else target
        return self.estimate.ratio("macs" if kind == "macs" else "nbytes")


@dataclass
class _State:
    sparsity: dict[str, int]
    """Layer -> index into the sparsity levels, -1 for none."""
    bits: dict[str, int]


@dataclass(frozen=True)
class _Step:
    sweep: str
    unit: tuple[str, ...]
    level: int
    saving: float
    cost: float

    @property
    def score(self) -> float:
        return self.saving / max(self.cost, _EPSILON)


class _Allocator:
    """The greedy search; kept as one object so its tables are computed once."""

    def __init__(self, tree: LayerTree, report: SensitivityReport, target: Target,
                 pinned: Mapping[str, LayerSpec], base: Plan) -> None:
        self.tree, self.target, self.pinned, self.base = tree, target, pinned, base
        self.granularity = report.granularity
        self.notes: list[str] = []
        self.s_levels, s_rows = report.sparsity.levels, report.sparsity.rows(report.layers)
        self.b_levels, b_rows = report.bits.levels, report.bits.rows(report.layers)
        resolved = base.resolve(tree)
        layers = []
        for name in report.layers:
            if name not in tree or not tree.get(name).prunable:
                self.notes.append(f"{name}: not a prunable layer of this model; left as it is")
            elif name in pinned:
                continue
            elif resolved[tree.get(name).id].exclude:
                self.notes.append(f"{name}: excluded in the plan; left as it is")
            else:
                layers.append(name)
        self.layers = layers
        self.s_drop = {name: s_rows[name] for name in layers}
        self.b_drop = {name: b_rows[name] for name in layers}
        self.units = self._sparsity_units(report)
        self.measure = "macs" if target.kind == "macs" else "nbytes"
        self.table = self._figures_table()

    def _sparsity_units(self, report: SensitivityReport) -> list[tuple[str, ...]]:
        """Channel cuts move whole dependency groups; a group holding a pinned or unswept
        layer is never cut (it would be cut partly, which the engine refuses)."""
        if self.granularity != "channels":
            return [(name,) for name in self.layers]
        groups = report.groups
        units, seen = [], set()
        for name in self.layers:
            if name in seen:
                continue
            group = tuple(groups.get(name, [name]))
            seen.update(group)
            blocked = [member for member in group if member not in self.layers]
            if blocked:
                self.notes.append(f"{', '.join(group)}: coupled with {', '.join(blocked)} "
                                  "(pinned, excluded or not swept), so no channels are cut")
                continue
            units.append(group)
        return units

    def spec(self, name: str, s_index: int, b_index: int) -> LayerSpec:
        """The layer's own spec in a given state: the base plan's, with the chosen fields."""
        values = self.base.spec(name).model_dump()
        if s_index >= 0:
            values["sparsity"] = float(self.s_levels[s_index])
            values["granularity"] = self.granularity
        if b_index >= 0:
            values["weight_bits"] = self.b_levels[b_index]
        return LayerSpec.model_validate(values)

    def plan(self, state: _State) -> Plan:
        plan = self.base.copy()
        for name, spec in self.pinned.items():
            plan.set_spec(name, spec)
        for name in self.layers:
            plan.set_spec(name, self.spec(name, state.sparsity[name], state.bits[name]))
        return plan

    def _figures_table(self) -> dict[tuple[str, ...], dict[tuple[int, ...], int]]:
        """Block -> its members' (sparsity, bits) indices -> the model's figure with only that
        block changed, filled as the search asks. A block is a dependency group (channel
        sweeps: its layers are cut together or not at all, as the estimate and the engine
        decide) or one layer; the figure of any combination is the base figure plus the sum
        of the blocks' differences."""
        empty = _State(dict.fromkeys(self.layers, -1), dict.fromkeys(self.layers, -1))
        self.base_plan = self.plan(empty)
        reference = estimate(self.tree, self.base_plan.resolve(self.tree))
        self.original = getattr(reference.before, self.measure)
        self.start = getattr(reference.after, self.measure)
        in_units = {name for unit in self.units for name in unit}
        self.blocks = [*self.units, *((name,) for name in self.layers if name not in in_units)]
        return {block: {} for block in self.blocks}

    def _block_delta(self, block: tuple[str, ...], state: _State) -> int:
        key = tuple(index for name in block for index in (state.sparsity[name],
                                                           state.bits[name]))
        known = self.table[block]
        if key not in known:
            plan = self.base_plan.copy()
            for name in block:
                plan.set_spec(name, self.spec(name, state.sparsity[name], state.bits[name]))
            after = estimate(self.tree, plan.resolve(self.tree)).after
            known[key] = getattr(after, self.measure) - self.start
        return known[key]

    def figure(self, state: _State) -> float:
        return self.start + sum(self._block_delta(block, state) for block in self.blocks)

    def drop(self, state: _State) -> float:
        total = 0.0
        for unit in self.units:
            index = state.sparsity[unit[0]]
            if index >= 0:
                total += max(0.0, float(self.s_drop[unit[0]][index]))
        for name in self.layers:
            if state.bits[name] >= 0:
                total += max(0.0, float(self.b_drop[name][state.bits[name]]))
        return total

    def candidates(self, state: _State) -> list[_Step]:
        steps = []
        now_figure, now_drop = self.figure(state), self.drop(state)
        for unit in self.units:
            row = self.s_drop[unit[0]]
            for level in range(state.sparsity[unit[0]] + 1, len(self.s_levels)):
                if row[level] is None:
                    continue
                trial = _State({**state.sparsity, **dict.fromkeys(unit, level)}, state.bits)
                steps.append(_Step("sparsity", unit, level, now_figure - self.figure(trial),
                                   self.drop(trial) - now_drop))
        for name in self.layers:
            row = self.b_drop[name]
            for level in range(state.bits[name] + 1, len(self.b_levels)):
                if row[level] is None:
                    continue
                trial = _State(state.sparsity, {**state.bits, name: level})
                steps.append(_Step("bits", (name,), level, now_figure - self.figure(trial),
                                   self.drop(trial) - now_drop))
        return [step for step in steps if step.saving > 0]

    def met(self, state: _State) -> bool:
        if self.target.kind == "accuracy_drop":
            return self.drop(state) <= self.target.value / 100.0 + 1e-12
        return self.figure(state) <= self.target.value * self.original

    def run(self) -> tuple[_State, list[str]]:
        state = _State(dict.fromkeys(self.layers, -1), dict.fromkeys(self.layers, -1))
        taken: list[str] = []
        budget = self.target.value / 100.0
        while self.target.kind == "accuracy_drop" or not self.met(state):
            steps = self.candidates(state)
            if self.target.kind == "accuracy_drop":
                steps = [s for s in steps if self.drop(state) + s.cost <= budget + 1e-12]
            if not steps:
                break
            best = max(steps, key=lambda step: (step.score, step.saving))
            if best.sweep == "sparsity":
                state.sparsity.update(dict.fromkeys(best.unit, best.level))
                level: Any = self.s_levels[best.level]
            else:
                state.bits[best.unit[0]] = best.level
                level = self.b_levels[best.level]
            taken.append(f"{best.sweep} {level} {'+'.join(best.unit)}")
        return state, taken


def allocate(tree: LayerTree, report: SensitivityReport, target: Target,
             pinned: Mapping[str, LayerSpec] | None = None,
             base_plan: Plan | None = None) -> Allocation:
    """Propose per-layer sparsity and weight bits meeting ``target`` from a sensitivity
    ``report`` (see :mod:`studio.core.engine.sensitivity`). ``pinned`` layers keep the spec
    given; every other swept layer's sparsity and bits are chosen afresh on top of
    ``base_plan`` (its defaults and other fields stay). The result is an ordinary Plan."""
    allocator = _Allocator(tree, report, target, dict(pinned or {}), base_plan or Plan())
    state, taken = allocator.run()
    plan = allocator.plan(state)
    figures = estimate(tree, plan.resolve(tree))
    chosen = {name: (float(allocator.s_levels[state.sparsity[name]])
                     if state.sparsity[name] >= 0 else 0.0,
                     allocator.b_levels[state.bits[name]] if state.bits[name] >= 0 else None)
              for name in allocator.layers}
    predicted = allocator.drop(state)
    met = allocator.met(state)
    notes = list(allocator.notes)
    notes.append("Predicted drop sums the single-layer drops of the sweep (a first-order "
                 "assumption); evaluate the plan to know the real one.")
    metric = report.metric
    if target.kind == "accuracy_drop" and metric != "accuracy":
        notes.append(f"The sweep measured {metric} (agreement with the uncompressed model, no "
                     f"labels), so the budget of {target.value:g} points allows a "
                     f"{target.value / 100:g} drop in {metric}.")
    if allocator.granularity == "unstructured" and target.kind in ("size", "macs"):
        notes.append("Unstructured zeros do not shrink the dense file or its MACs, so only "
                     "bit-widths count toward this target; sweep by channels to cut them.")
    if not met:
        reached = figures.ratio("macs" if target.kind == "macs" else "nbytes")
        if target.kind == "accuracy_drop":
            notes.append(f"The pinned and base settings alone exceed the {target.value} point "
                         "budget.")
        else:
            notes.append(f"Target {target.kind} ≤ {target.value:.0%} cannot be reached with the "
                         f"levels swept: the smallest plan found keeps {reached:.1%}. Add "
                         "higher levels, unpin layers, or sweep by channels.")
    return Allocation(plan, figures, chosen, predicted, met, notes, taken)
