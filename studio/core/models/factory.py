"""Resolve an architecture named as ``package.module:factory``.

Naming a factory imports a module and calls a function, so a name read from a file is code chosen
by whoever wrote the file. Only the factories registered here (the studio's own models) are used
without asking; any other name, even one inside the ``studio`` package (``studio.core.demo.train:
main`` would retrain and overwrite the demo checkpoint), must come from the user.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from torch import nn

from studio.core.demo.model import DEMO_ARCHITECTURE
from studio.core.errors import ModelLoadError

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
BUILT_IN_FACTORIES: frozenset[str] = frozenset({DEMO_ARCHITECTURE})
"""The studio's own model factories: the only ones a file may name and have called unasked."""


def is_built_in(architecture: str) -> bool:
    """A factory registered in :data:`BUILT_IN_FACTORIES`, matched exactly (no prefix rule)."""
    return architecture in BUILT_IN_FACTORIES


def build_architecture(architecture: str) -> nn.Module:
    """Import the module, call the factory with no arguments, and check it built a module."""
    if not _FACTORY.match(architecture):
        raise ModelLoadError(
            f"architecture {architecture!r}: write it as package.module:factory, "
            "e.g. mypkg.models:build_resnet"
        )
    module_name, factory_name = architecture.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelLoadError(
            f"architecture {architecture!r}: cannot import {module_name!r} ({error}). "
            "Install the package that defines it, or fix the name."
        ) from error
    factory: Callable[[], object] | None = getattr(module, factory_name, None)
    if not callable(factory):
        raise ModelLoadError(f"architecture {architecture!r}: {module_name} has no {factory_name}")
    try:
        built = factory()
    except Exception as error:
        raise ModelLoadError(
            f"architecture {architecture!r}: calling {factory_name}() failed: "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(built, nn.Module):
        raise ModelLoadError(
            f"architecture {architecture!r}: {factory_name}() returned "
            f"{type(built).__name__}, not a torch.nn.Module"
        )
    return built
