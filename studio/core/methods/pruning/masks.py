"""Keep pruned weights at zero: a set of boolean masks, one per layer, re-applied after updates.

Zeroing a weight once is not enough when fine-tuning follows: the optimizer's momentum and weight
decay move it off zero at the next step. A :class:`MaskSet` remembers which weights were removed
(by module name, so it survives structured surgery that replaces parameter objects) and zeroes
them again; pass ``masks.hook(model)`` as ``after_step`` to ``studio.core.train.loop.train``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


def layer_weight(model: nn.Module, name: str) -> Tensor:
    """The prunable ``weight`` of the module called ``name`` (a LayerTree node name)."""
    weight = getattr(model.get_submodule(name), "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() < 2:
        raise ValueError(f"layer {name!r} has no prunable weight (a tensor of 2 or more dims)")
    return weight


@dataclass
class MaskSet:
    """Module name -> bool mask like its weight: ``True`` keeps a weight, ``False`` zeroes it."""

    masks: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.masks)

    def __iter__(self) -> Iterator[str]:
        return iter(self.masks)

    def __contains__(self, name: object) -> bool:
        return name in self.masks

    def __getitem__(self, name: str) -> Tensor:
        return self.masks[name]

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero every masked weight of ``model`` in place."""
        for name, mask in self.masks.items():
            weight = layer_weight(model, name)
            if weight.shape != mask.shape:
                raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)} but the "
                                 f"weight now has {tuple(weight.shape)}; compute masks after "
                                 "structured pruning")
            weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))

    def hook(self, model: nn.Module) -> Callable[[int], None]:
        """An ``after_step`` callback for the training loop that re-applies the masks."""
        def after_step(_step: int) -> None:
            self.apply(model)
        return after_step

    def merged(self, other: MaskSet) -> MaskSet:
        """Both sets at once: a weight is kept only where every mask on its layer keeps it."""
        masks = dict(self.masks)
        for name, mask in other.masks.items():
            masks[name] = masks[name] & mask if name in masks else mask
        return MaskSet(masks)

    def sparsity(self) -> dict[str, float]:
        """Fraction of each layer's weights that the masks remove."""
        return {name: 1.0 - float(mask.float().mean()) for name, mask in self.masks.items()}

    def removed(self) -> int:
        """Number of weights the masks remove, over all layers."""
        return sum(int((~mask).sum()) for mask in self.masks.values())
