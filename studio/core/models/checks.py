"""Sanity checks on a loaded model's weights, run before any work that would spread the damage."""

from __future__ import annotations

import torch
from torch import nn


def find_non_finite(module: nn.Module) -> list[str]:
    """Names of the layers (modules) whose parameters or buffers hold NaN or Inf, in model order.

    Weights stored at the top level of ``module`` are reported under ``<root>``.
    """
    layers: list[str] = []
    tensors = [*module.named_parameters(), *module.named_buffers()]
    for name, tensor in tensors:
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        if bool(torch.isfinite(tensor.detach()).all()):
            continue
        layer = name.rpartition(".")[0] or "<root>"
        if layer not in layers:
            layers.append(layer)
    return layers


def describe_non_finite(layers: list[str], limit: int = 5) -> str:
    """``conv1, fc (and 2 more)``: a short list for one-line messages."""
    more = f" and {len(layers) - limit} more" if len(layers) > limit else ""
    return f"{', '.join(layers[:limit])}{more}"
