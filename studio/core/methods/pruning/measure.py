"""Params and MACs of a model as it is now, for before/after figures in pruning reports.

Structured pruning changes shapes but no names, so a :class:`LayerTree` built before it is stale;
these figures come from re-tracing the model with ``build_torch_tree`` on the example input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from studio.core.graph.macs import MacCounter
from studio.core.graph.observe import evaluating, run_model
from studio.core.graph.torch_tree import build_torch_tree
from studio.core.models.inputs import DTYPES, InputSpec

_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


@dataclass(frozen=True)
class Size:
    params: int
    nonzero_params: int
    macs: int


NO_SIZE = Size(0, 0, 0)

def _count_params(model: nn.Module) -> tuple[int, int]:
    params = nonzero = 0
    for param in model.parameters():  # shared parameters are yielded once
        params += param.numel()
        nonzero += int(torch.count_nonzero(param.detach()))
    return params, nonzero


def measure(model: nn.Module, example: Any) -> Size:
    """Params, nonzero params and MACs of ``model`` on ``example`` (a tensor, tuple or dict).

    A single tensor goes through ``build_torch_tree`` (the figures the GUI shows); other inputs
    are counted with the same MAC counter directly.
    """
    if isinstance(example, torch.Tensor) and example.dtype in _DTYPE_NAMES:
        spec = InputSpec(tuple(example.shape), _DTYPE_NAMES[example.dtype])
        root = build_torch_tree(model, spec, type(model).__name__).root
        return Size(root.total_params, root.total_params - root.total_zeros, root.total_macs)
    params, nonzero = _count_params(model)
    counter = MacCounter(lambda: 0)
    with evaluating(model), counter:
        run_model(model, example)
    return Size(params, nonzero, sum(counter.macs.values()))


def output_shapes(model: nn.Module, example: Any) -> list[tuple[int, ...]]:
    """Shapes of every tensor the model returns, in eval mode and without gradients."""
    with evaluating(model):
        output = run_model(model, example)
    return [tuple(t.shape) for t in tp.utils.flatten_as_list(output)
            if isinstance(t, torch.Tensor)]
