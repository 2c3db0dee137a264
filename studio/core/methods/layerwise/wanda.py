"""Wanda (Sun et al. 2023): prune by |weight| x the norm of the input feature it multiplies,
comparing weights within each output row, with no weight update. The cheap baseline to
SparseGPT: one pass of statistics, no Hessian."""

from __future__ import annotations

import torch
from torch import Tensor

from studio.core.methods.pruning.nm import nm_mask


def wanda_scores(weight: Tensor, column_squares: Tensor) -> Tensor:
    """|W_ij| * ||X_j||: ``column_squares`` holds the mean of X_j^2 over the tokens."""
    return weight.detach().float().abs() * column_squares.sqrt().unsqueeze(0)


def row_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Keep-mask removing the ``sparsity`` lowest scores of every row (output)."""
    count = int(scores.shape[1] * sparsity)
    mask = torch.ones_like(scores, dtype=torch.bool)
    if count:
        lowest = torch.topk(scores, count, dim=1, largest=False).indices
        mask.scatter_(1, lowest, False)
    return mask


def wanda_mask(weight: Tensor, column_squares: Tensor, sparsity: float = 0.5,
               nm: tuple[int, int] | None = None) -> Tensor:
    """Wanda's keep-mask for an [out, in] weight: per row, or N:M along the inputs."""
    scores = wanda_scores(weight, column_squares)
    return nm_mask(scores, *nm) if nm else row_mask(scores, sparsity)
