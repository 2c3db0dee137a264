"""Capture intermediate outputs by module name with forward hooks, for feature and relation KD.

Hooks rather than model surgery: the student is trained and exported as it is, and ``close()``
leaves it exactly as it was found.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from studio.core.errors import StudioError
from studio.core.util import first_tensor


def find_modules(model: nn.Module, names: Iterable[str], role: str = "model"
                 ) -> dict[str, nn.Module]:
    """Modules by qualified name; an unknown name is a clear error with close suggestions."""
    modules = dict(model.named_modules())
    found: dict[str, nn.Module] = {}
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise StudioError(f"{role} has no layer named {name!r}{hint}")
        found[name] = modules[name]
    return found


class FeatureCapture:
    """Records the output of named modules on every forward, in ``features[name]``.

    Outputs are cloned by default: a following in-place op (``ReLU(inplace=True)`` after a batch
    norm) would otherwise overwrite the captured value. A module called twice in one forward
    keeps its last output. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], role: str = "model",
                 clone: bool = True) -> None:
        self.clone = clone
        self.features: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        unique = list(dict.fromkeys(names))
        for name, module in find_modules(model, unique, role).items():
            self._handles.append(module.register_forward_hook(self._hook(name, role)))

    def _hook(self, name: str, role: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = first_tensor(output)
            if tensor is None:
                raise StudioError(f"{role} layer {name!r} returned no tensor to distil from "
                                  f"({type(output).__name__})")
            self.features[name] = tensor.clone() if self.clone else tensor

        return hook

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.features:
            raise StudioError(f"layer {name!r} did not run in the last forward pass")
        return self.features[name]

    def clear(self) -> None:
        """Forget the last batch's features (frees their memory and autograd graph)."""
        self.features.clear()

    def close(self) -> None:
        """Remove every hook; safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.features.clear()

    def __enter__(self) -> FeatureCapture:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
