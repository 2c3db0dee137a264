"""Small generic helpers that every layer of the core may use (it imports nothing of the core)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor


def first_tensor(output: Any) -> Tensor | None:
    """The first tensor in a module's output: itself, or the first in a tuple, list or mapping
    (HF-style ``ModelOutput`` is a mapping); ``None`` when there is none."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            found = first_tensor(item)
            if found is not None:
                return found
    return None
