"""Consistent augmentation for distillation ("function matching", Beyer et al. CVPR 2022: a
good teacher is patient and consistent): teacher and student see the SAME augmented batch.

A teacher that is nearly one-hot on its own training samples has little to say about them
beyond the label; on a shifted or mixed sample its scores are softer and differ from the
label, and the student learns the teacher's function around the data rather than its answers
on it. Written here rather than taken from torchvision because the batch and its partner labels
must be drawn once, from the run's seed, and handed to both models and to the cross entropy.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from studio.core.errors import StudioError

AUGMENTS = ("none", "shift", "mixup")
MAX_SHIFT = 2
"""``shift``: each image moves by up to this many pixels in each direction (edges repeated)."""
MIXUP_CONCENTRATION = 1.0
"""``mixup``: the mixing share is drawn from Beta(c, c); 1 is uniform on [0, 1], so most
mixes are far from either sample and the teacher's scores on them are truly soft."""


class AugmentedBatch(NamedTuple):
    """The batch both models see; with mixup, ``share`` of ``labels`` and the rest of
    ``partner_labels`` (None without mixup: the labels still hold)."""

    inputs: Tensor
    labels: Tensor | None
    partner_labels: Tensor | None = None
    share: float = 1.0


class ConsistentAugmentation:
    """Draws one augmentation per batch from its own generator, so runs repeat by seed and
    the training loop's shuffle is left untouched."""

    def __init__(self, kind: str, seed: int = 0) -> None:
        if kind not in AUGMENTS:
            raise StudioError(f"distill.augment: unknown kind {kind!r}; one of "
                              f"{', '.join(AUGMENTS)}")
        self.kind = kind
        self._rng = np.random.default_rng(seed)

    def check(self, example: Tensor) -> None:
        """Refuse, before training, inputs the augmentation cannot handle."""
        if self.kind == "shift" and example.dim() != 4:
            raise StudioError(f"distill.augment shift moves images, so it needs inputs of shape "
                              f"(N, C, H, W); these are {list(example.shape)} (use mixup)")
        if self.kind == "mixup" and not example.is_floating_point():
            raise StudioError(f"distill.augment mixup blends inputs, so they must be floating "
                              f"point; these are {example.dtype} (token ids cannot be mixed)")

    def __call__(self, inputs: Tensor, labels: Tensor | None) -> AugmentedBatch:
        if self.kind == "shift":
            return AugmentedBatch(self._shift(inputs), labels)
        if self.kind == "mixup":
            return self._mixup(inputs, labels)
        return AugmentedBatch(inputs, labels)

    def _shift(self, images: Tensor) -> Tensor:
        k = MAX_SHIFT
        padded = F.pad(images, (k, k, k, k), mode="replicate")
        offsets = self._rng.integers(0, 2 * k + 1, (len(images), 2))
        height, width = images.shape[2:]
        return torch.stack([padded[i, :, dy:dy + height, dx:dx + width]
                            for i, (dy, dx) in enumerate(offsets.tolist())])

    def _mixup(self, inputs: Tensor, labels: Tensor | None) -> AugmentedBatch:
        share = float(self._rng.beta(MIXUP_CONCENTRATION, MIXUP_CONCENTRATION))
        order = torch.as_tensor(self._rng.permutation(len(inputs)), device=inputs.device)
        mixed = share * inputs + (1.0 - share) * inputs[order]
        partner = labels[order] if labels is not None else None
        return AugmentedBatch(mixed, labels, partner, share)
