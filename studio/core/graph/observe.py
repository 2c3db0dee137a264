"""One forward pass watched by hooks.

Tree building, latency tables, block influence, supernets and layer pictures all need the same
thing: run the model once in eval mode without gradients, see what some modules take and give,
and leave the model exactly as it was (hooks removed, training flag restored) even when the
user's forward raises. This module is that one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def run_model(model: nn.Module, example: Any) -> Any:
    """``model`` applied to ``example`` however it is packed (tensor, tuple or dict of kwargs)."""
    if isinstance(example, dict):
        return model(**example)
    if isinstance(example, tuple | list):
        return model(*example)
    return model(example)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode and without gradients; its training flag is restored after."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(training)


@contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, Callable[..., Any]]],
                  with_kwargs: bool = False) -> Iterator[None]:
    """Each (module, hook) attached as a forward hook for the ``with`` block, then removed."""
    handles = [module.register_forward_hook(hook, with_kwargs=with_kwargs)
               for module, hook in hooks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def observe(model: nn.Module, example: Any,
            hooks: Iterable[tuple[nn.Module, Callable[..., Any]]],
            with_kwargs: bool = False) -> Any:
    """One eval-mode, no-grad forward pass of ``model`` on ``example`` with ``hooks`` attached;
    returns the model's output."""
    with forward_hooks(hooks, with_kwargs), evaluating(model):
        return run_model(model, example)
