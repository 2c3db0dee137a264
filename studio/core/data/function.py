"""Data from the user's own code: ``package.module:function`` returning an iterable of batches.

Importing and calling it runs that code, so it happens only with the user's consent (like
unpickling a model); without it :class:`FunctionTrustRequired` names the function. Each batch is
a tensor or array of inputs, or an ``(inputs, labels)`` pair. Reading stops after
``max_samples``, so an endless generator cannot hang the job. A module lying beside the recipe
or project (its folder) is importable without installing it, as users keep such loaders there.
"""

from __future__ import annotations

import contextlib
import pkgutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from studio.core.data.consent import FunctionTrustRequired, importable_from, module_specs
from studio.core.data.samples import Samples, as_inputs, as_labels
from studio.core.errors import StudioError

__all__ = ["FunctionTrustRequired", "read_function"]


def _file_of(module: Any) -> str | None:
    file = getattr(module, "__file__", None)
    return str(Path(file).resolve()) if isinstance(file, str) else None


@contextlib.contextmanager
def _own_bytecode() -> Iterator[None]:
    """Compile the sources the consent hashed, never a project's ``__pycache__``: Python runs a
    cached ``.pyc`` whose header matches the source's time and size, and a folder sent as an
    archive keeps both, so a harmless ``loader.py`` could stand beside harmful bytecode."""
    previous = sys.pycache_prefix
    with tempfile.TemporaryDirectory(prefix="studio-pycache-") as prefix:
        sys.pycache_prefix = prefix
        try:
            yield
        finally:
            sys.pycache_prefix = previous


@contextlib.contextmanager
def _fresh_import(target: str, base_dir: Path | None) -> Iterator[Any]:
    """The function ``target`` names, imported from the files found now, and forgotten after.

    A module of the same name imported earlier from another file (another project's
    ``loader.py``) is set aside during the import, and every module imported from the project
    folder is dropped from ``sys.modules`` afterwards, so the next project gets its own code.
    """
    with importable_from(base_dir) as folder:
        specs = module_specs(target)
        before = set(sys.modules)
        set_aside = {spec.name: sys.modules.pop(spec.name) for spec in specs
                     if spec.name in sys.modules and spec.has_location
                     and _file_of(sys.modules[spec.name]) != str(Path(str(spec.origin)).resolve())}
        try:
            try:
                with _own_bytecode():
                    function = pkgutil.resolve_name(target)
            except (ImportError, AttributeError, ValueError) as error:
                raise StudioError(f"data source {target}: cannot import it ({error}); install "
                                  "the package that defines it, put its module beside the "
                                  "recipe, or fix the name") from None
            except Exception as error:  # the user's module failed while importing
                raise StudioError(f"data source {target}: importing it raised "
                                  f"{type(error).__name__}: {error}") from None
            if not callable(function):
                raise StudioError(f"data source {target}: is not a function")
            yield function
        finally:
            chain = {spec.name for spec in specs}
            for name in set(sys.modules) - before:
                file = _file_of(sys.modules[name])
                if name in chain or (folder is not None and file is not None
                                     and Path(file).is_relative_to(folder)):
                    del sys.modules[name]
            sys.modules.update(set_aside)


def _split_batch(batch: Any, target: str, number: int) -> tuple[Tensor, Tensor | None]:
    where = f"data source {target}: batch {number}"
    if isinstance(batch, tuple | list):
        if len(batch) not in (1, 2):
            raise StudioError(f"{where}: a tuple of {len(batch)} items; give inputs or "
                              "(inputs, labels)")
        labels = as_labels(batch[1], where) if len(batch) == 2 else None
        return as_inputs(_array(batch[0], where), where), labels
    return as_inputs(_array(batch, where), where), None


def _array(value: Any, where: str) -> Tensor | np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise StudioError(f"{where}: a {type(value).__name__} of {array.dtype}, not a tensor or "
                          "numeric array")
    return array


def read_function(target: str, trust: bool, max_samples: int,
                  base_dir: Path | None = None) -> Samples:
    """Call ``target`` and gather its batches (at most ``max_samples`` samples); its module is
    looked up in ``base_dir`` too."""
    if not trust:
        raise FunctionTrustRequired(target)
    with _fresh_import(target, base_dir) as function:
        return _gather(function, target, max_samples)


def _gather(function: Any, target: str, max_samples: int) -> Samples:
    inputs: list[Tensor] = []
    labels: list[Tensor] = []
    count = 0
    try:
        produced = function()
        if not isinstance(produced, Iterable):
            raise StudioError(f"data source {target}: returned {type(produced).__name__}, not "
                              "an iterable of batches")
        iterator = iter(produced)
        try:
            for number, batch in enumerate(iterator):
                batch_inputs, batch_labels = _split_batch(batch, target, number)
                if batch_inputs.dim() == 0:
                    raise StudioError(f"data source {target}: batch {number} is one number, "
                                      "not a batch of samples")
                if inputs and (batch_labels is None) != (not labels):
                    raise StudioError(f"data source {target}: batch {number} "
                                      f"{'has' if batch_labels is not None else 'lacks'} "
                                      "labels where the first batch did not")
                if inputs and batch_inputs.shape[1:] != inputs[0].shape[1:]:
                    raise StudioError(f"data source {target}: batch {number} holds samples of "
                                      f"shape {list(batch_inputs.shape[1:])} where batch 0 "
                                      f"held {list(inputs[0].shape[1:])}")
                keep = max_samples - count
                inputs.append(batch_inputs[:keep])
                if batch_labels is not None:
                    labels.append(batch_labels[:keep])
                count += len(inputs[-1])
                if count >= max_samples:
                    break
        finally:
            close = getattr(iterator, "close", None)
            if callable(close):
                close()
    except StudioError:
        raise
    except Exception as error:  # the user's function failed
        raise StudioError(f"data source {target}: raised {type(error).__name__}: {error}"
                          ) from None
    if not inputs:
        raise StudioError(f"data source {target}: gave no batches")
    return Samples(torch.cat(inputs), torch.cat(labels) if labels else None,
                   f"samples in the order {target} gave them")
