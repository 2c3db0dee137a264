"""Gradual pruning: raise sparsity step by step during fine-tuning (AGP, Zhu & Gupta 2017).

Cutting everything at once and then fine-tuning loses more accuracy than cutting a little, letting
the network adapt, and cutting again. The cubic schedule prunes fast while many redundant weights
remain and slowly near the end: ``s_t = s_f + (s_i - s_f) * (1 - t / T) ** 3``.

Use :class:`GradualPruner` as the ``after_step`` callback of ``studio.core.train.loop.train``; it
prunes by magnitude at its pruning steps and re-applies the masks after every other step.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from studio.core.methods.pruning.importance import magnitude_scores
from studio.core.methods.pruning.masks import MaskSet
from studio.core.methods.pruning.unstructured import layer_masks


def cubic_sparsity(step: int, total_steps: int, final: float, initial: float = 0.0) -> float:
    """Sparsity at ``step``: ``initial`` at 0, ``final`` from ``total_steps`` on."""
    if total_steps <= 0:
        return final
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def cubic_schedule(total_steps: int, final: float, initial: float = 0.0) -> list[float]:
    """Targets for steps ``0 .. total_steps`` (``total_steps + 1`` values)."""
    return [cubic_sparsity(t, total_steps, final, initial) for t in range(total_steps + 1)]


def layer_schedule(targets: Mapping[str, float], total_steps: int,
                   initial: float = 0.0) -> list[dict[str, float]]:
    """Per-step targets: entry ``t`` maps each layer to its sparsity at step ``t``."""
    curves = {name: cubic_schedule(total_steps, final, min(initial, final))
              for name, final in targets.items()}
    return [{name: curve[t] for name, curve in curves.items()} for t in range(total_steps + 1)]


class GradualPruner:
    """``after_step`` callback: magnitude-prune on the cubic schedule, keep the zeros in between.

    Pruning happens every ``every`` training steps from ``start`` until ``start + ramp_steps``,
    where each layer reaches its target. Masks only grow: a weight once zeroed stays zero, since
    re-applied masks hold it at zero and a zero has the smallest magnitude. ``base`` holds masks
    fixed beforehand (N:M, one-shot layers), merged in at every step.
    """

    def __init__(self, model: nn.Module, targets: Mapping[str, float], ramp_steps: int,
                 every: int = 1, start: int = 0, initial: float = 0.0,
                 base: MaskSet | None = None) -> None:
        if every < 1:
            raise ValueError("prune at least every step (every >= 1)")
        self.model = model
        self.targets = dict(targets)
        self.ramp_steps = ramp_steps
        self.every = every
        self.start = start
        self.initial = initial
        self.base = base or MaskSet()
        self.masks = self.base
        self.history: list[tuple[int, dict[str, float]]] = []
        """(step, achieved sparsity per layer) at each pruning step."""

    def is_pruning_step(self, step: int) -> bool:
        since = step - self.start
        end = self.ramp_steps
        return 0 <= since <= end and (since % self.every == 0 or since == end)

    def targets_at(self, step: int) -> dict[str, float]:
        return {name: cubic_sparsity(step - self.start, self.ramp_steps, final,
                                     min(self.initial, final))
                for name, final in self.targets.items()}

    def __call__(self, step: int) -> None:
        if self.is_pruning_step(step) and self.targets:
            scores = magnitude_scores(self.model, self.targets)
            self.masks = self.base.merged(layer_masks(scores, self.targets_at(step)))
            self.masks.apply(self.model)
            achieved = self.masks.sparsity()
            self.history.append((step, {name: achieved[name] for name in self.targets}))
        else:
            self.masks.apply(self.model)
