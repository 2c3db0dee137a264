"""N:M semi-structured sparsity: in every M consecutive weights along the input, keep the N largest.

This is the pattern sparse tensor cores run at speed (2:4 on NVIDIA Ampere and later). Groups run
along the input dimension: a Linear weight's rows, and for a convolution the flattened
``in_channels * kh * kw`` axis of each filter. When that axis is not a multiple of M, the last
partial group is left dense (sparse kernels could not use it anyway) and the report counts it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from studio.core.methods.pruning.importance import weight_scores
from studio.core.methods.pruning.masks import MaskSet
from studio.core.train.loop import LossFn, cross_entropy


def nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """Bool mask shaped like ``scores`` keeping the ``n`` highest of every ``m`` along the input."""
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")
    rows = scores.reshape(scores.shape[0], -1)
    full = rows.shape[1] - rows.shape[1] % m
    mask = torch.ones_like(rows, dtype=torch.bool)
    if full:
        groups = rows[:, :full].reshape(rows.shape[0], full // m, m)
        # A stable sort keeps the earlier weight on ties, so the result is deterministic.
        order = torch.argsort(groups, dim=-1, descending=True, stable=True)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(-1, order[..., :n], True)
        mask[:, :full] = keep.reshape(rows.shape[0], full)
    return mask.view(scores.shape)


def dense_tail(shape: torch.Size | tuple[int, ...], m: int) -> int:
    """Weights per layer left dense because the input axis is not a multiple of ``m``."""
    fan_in = 1
    for size in shape[1:]:
        fan_in *= size
    return shape[0] * (fan_in % m)


def nm_masks(scores: Mapping[str, Tensor], patterns: Mapping[str, tuple[int, int]]) -> MaskSet:
    """One N:M mask per layer: ``patterns`` maps a layer name to its (N, M)."""
    return MaskSet({name: nm_mask(scores[name], n, m) for name, (n, m) in patterns.items()})


def follows_nm(weight: Tensor, n: int, m: int) -> bool:
    """Whether every full group of ``m`` along the input holds at most ``n`` nonzero weights."""
    rows = weight.detach().reshape(weight.shape[0], -1)
    full = rows.shape[1] - rows.shape[1] % m
    groups = rows[:, :full].reshape(rows.shape[0], -1, m)
    return bool(((groups != 0).sum(-1) <= n).all())


def prune_nm(model: nn.Module, patterns: Mapping[str, tuple[int, int]],
             importance: str = "magnitude", data: TensorDataset | None = None,
             loss_fn: LossFn = cross_entropy) -> MaskSet:
    """Apply N:M masks to ``model`` in place and return them (re-apply after optimizer steps)."""
    if not patterns:
        return MaskSet()
    masks = nm_masks(weight_scores(model, patterns, importance, data, loss_fn), patterns)
    masks.apply(model)
    return masks
