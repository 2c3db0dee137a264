"""Resolve an architecture named as ``package.module:factory``."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from torch import nn

from studio.core.errors import ModelLoadError

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
BUILT_IN_PREFIX = "studio."


def is_built_in(architecture: str) -> bool:
    """Factories that ship with the studio may be used without asking the user."""
    return architecture.startswith(BUILT_IN_PREFIX)


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
