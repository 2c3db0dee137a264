"""Per-weight importance scores: magnitude, or first-order Taylor when data is given.

Magnitude (|w|) needs nothing but the weights. First-order Taylor (|w * dL/dw|, Molchanov et al.
2019) estimates how much the loss changes when a weight is set to zero, so it keeps small weights
that matter and drops large ones that do not; it needs a few batches of labelled data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from studio.core.data.task import batches
from studio.core.methods.pruning.masks import layer_weight
from studio.core.train.loop import LossFn, cross_entropy

ImportanceKind = Literal["magnitude", "l1", "l2", "taylor", "fisher", "obert"]
"""``magnitude`` is L2 for channels (``l1``/``l2`` choose), |w| for single weights; ``taylor``
needs data; ``fisher`` (heads and FFN units only, see :mod:`.fisher`) needs inputs, no labels;
``obert`` (single weights only, see :mod:`.obert`) needs data, labels or not."""
IMPORTANCE_KINDS: tuple[str, ...] = ("magnitude", "l1", "l2", "taylor", "fisher", "obert")


def check_importance(kind: str, data: TensorDataset | None) -> None:
    """Fail early, with words, on an unknown kind or Taylor without data."""
    if kind not in IMPORTANCE_KINDS:
        raise ValueError(f"importance {kind!r}: use one of {', '.join(IMPORTANCE_KINDS)}")
    if kind == "fisher" and (data is None or len(data) == 0):
        raise ValueError("Fisher mask search needs calibration inputs; pass data or use "
                         "magnitude")
    if kind in ("taylor", "obert") and (data is None or len(data) == 0):
        raise ValueError(f"{kind} importance needs data (a few labelled batches); "
                         "pass data or use magnitude")


def magnitude_scores(model: nn.Module, names: Iterable[str]) -> dict[str, Tensor]:
    """|w| of each named layer's weight (a copy, so later surgery does not change it)."""
    return {name: layer_weight(model, name).detach().abs().clone() for name in names}


def _labelled_batches(data: TensorDataset, n_batches: int, batch_size: int,
                      device: torch.device) -> Iterable[tuple[Tensor, Tensor]]:
    for index, (inputs, labels) in enumerate(batches(data, batch_size)):
        if index >= n_batches:
            break
        yield inputs.to(device), labels.to(device)


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def accumulate_gradients(model: nn.Module, data: TensorDataset, loss_fn: LossFn = cross_entropy,
                         n_batches: int = 4, batch_size: int = 64) -> None:
    """Leave in every ``param.grad`` the gradient summed over ``n_batches`` batches.

    Runs in eval mode so batch-norm statistics and dropout do not change the model; callers
    should call :func:`clear_gradients` when done, before training builds its optimizer.
    """
    training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        for inputs, labels in _labelled_batches(data, n_batches, batch_size, _device(model)):
            loss_fn(model, inputs, labels).backward()
    finally:
        model.train(training)


def clear_gradients(model: nn.Module) -> None:
    model.zero_grad(set_to_none=True)


def taylor_scores(model: nn.Module, names: Iterable[str], data: TensorDataset,
                  loss_fn: LossFn = cross_entropy, n_batches: int = 4,
                  batch_size: int = 64) -> dict[str, Tensor]:
    """|w * dL/dw| per weight, summed over batches (per batch, so opposite signs do not cancel)."""
    names = list(names)
    weights = {name: layer_weight(model, name) for name in names}
    scores = {name: torch.zeros_like(weight, dtype=torch.float32)
              for name, weight in weights.items()}
    training = model.training
    model.eval()
    try:
        for inputs, labels in _labelled_batches(data, n_batches, batch_size, _device(model)):
            model.zero_grad(set_to_none=True)
            loss_fn(model, inputs, labels).backward()
            for name, weight in weights.items():
                if weight.grad is not None:
                    scores[name] += (weight.detach() * weight.grad).abs().float()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(training)
    return scores


def weight_scores(model: nn.Module, names: Iterable[str], kind: str,
                  data: TensorDataset | None = None, loss_fn: LossFn = cross_entropy,
                  n_batches: int = 4) -> dict[str, Tensor]:
    """Scores of the kind asked for; every magnitude kind is |w| for single weights."""
    check_importance(kind, data)
    if kind == "taylor":
        assert data is not None
        return taylor_scores(model, names, data, loss_fn, n_batches)
    return magnitude_scores(model, names)
