"""Gradual pruning: raise sparsity step by step during fine-tuning (AGP, Zhu & Gupta 2017).

Cutting everything at once and then fine-tuning loses more accuracy than cutting a little, letting
the network adapt, and cutting again. The cubic schedule prunes fast while many redundant weights
remain and slowly near the end: ``s_t = s_f + (s_i - s_f) * (1 - t / T) ** 3``.

Use :class:`GradualPruner` as the ``after_step`` callback of ``studio.core.train.loop.train``; it
prunes by magnitude at its pruning steps and re-applies the masks after every other step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from studio.core.methods.pruning.importance import magnitude_scores
from studio.core.methods.pruning.masks import MaskSet, layer_weight
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


class RigLPruner(GradualPruner):
    """AGP up to the targets, then sparse training with an evolving mask (RigL, Evci et al.
    2020): every ``every`` steps until ``regrow_until``, each layer drops its smallest active
    weights and regrows as many inactive ones where the last batch's gradient is largest, so the
    sparsity stays at the target while the mask moves to where the loss wants weights. The
    share moved decays with a cosine from ``regrow_fraction``. Regrown weights start at zero.

    Hand-written: the rigl-torch package imports torchvision, which has no CPU build here. It
    buys accuracy at a sparsity, not speed: zeros stored densely run at dense speed.
    ``report`` (a dict) is updated in place with the moves, so a stage report holding it shows
    them once training ends.
    """

    def __init__(self, model: nn.Module, targets: Mapping[str, float], ramp_steps: int,
                 regrow_until: int, every: int = 1, regrow_fraction: float = 0.3,
                 base: MaskSet | None = None, report: dict[str, Any] | None = None) -> None:
        super().__init__(model, targets, ramp_steps, every, base=base)
        self.regrow_until = regrow_until
        self.regrow_fraction = regrow_fraction
        self.report = report if report is not None else {}
        self.report.update({"regrow_steps": 0, "moved": 0})

    def __call__(self, step: int) -> None:
        since = step - self.start
        if since <= self.ramp_steps or since > self.regrow_until or since % self.every:
            super().__call__(step)
            return
        share = self.regrow_fraction * (1 + math.cos(math.pi * (since - self.ramp_steps) / max(
            1, self.regrow_until - self.ramp_steps))) / 2
        grown = {name: self._regrow(name, share) for name in self.targets}
        self.masks = self.base.merged(MaskSet({name: mask for name, mask in grown.items()}))
        self.masks.apply(self.model)
        self.report["regrow_steps"] += 1
        self.history.append((step, {name: self.masks.sparsity()[name] for name in self.targets}))

    @torch.no_grad()
    def _regrow(self, name: str, share: float) -> Tensor:
        """The layer's new mask: ``share`` of its active weights moved, the count unchanged."""
        weight = layer_weight(self.model, name)
        mask = self.masks[name].flatten().clone()
        active = torch.nonzero(mask).flatten()
        inactive = torch.nonzero(~mask).flatten()
        count = min(int(share * len(active)), len(inactive))
        if count == 0 or weight.grad is None:
            return mask.view(weight.shape)
        magnitudes = weight.detach().abs().flatten()[active]
        dropped = active[torch.argsort(magnitudes, stable=True)[:count]]
        growth = weight.grad.detach().abs().flatten()[inactive]
        grown = inactive[torch.argsort(growth, descending=True, stable=True)[:count]]
        mask[dropped] = False
        mask[grown] = True
        weight.view(-1)[grown] = 0.0  # RigL: regrown connections start from zero
        self.report["moved"] += count
        return mask.view(weight.shape)
