"""Gradient checkpointing with ``torch.utils.checkpoint`` directly: a chosen module's
activations are dropped after its forward and recomputed in the backward pass (less memory,
about one more forward of time).

Hugging Face's own switch is not used: it only acts in training mode, and the studio trains
with dropout off in eval mode when it matches the uncompressed model's outputs.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _checkpointed(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():  # evaluation: nothing to save
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_candidates(model: nn.Module, blocks: Sequence[str] = ()) -> list[str]:
    """What to checkpoint: the transformer blocks when there are any, else the model's
    top-level children holding weights. Modules with batch norms are left out: their recompute
    would update the running statistics twice."""
    names = list(blocks) or [name for name, child in model.named_children()
                             if any(True for _ in child.parameters())]
    return [name for name in names if not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm)
        for m in model.get_submodule(name).modules())]


@contextlib.contextmanager
def checkpointed(model: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """While open, the named modules' forwards run under activation checkpointing."""
    modules = [model.get_submodule(name) for name in names]
    for module in modules:
        module.forward = functools.partial(_checkpointed, module.forward)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for module in modules:
            del module.forward  # back to the class's forward
