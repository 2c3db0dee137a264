"""Unpickle torch data with ``weights_only=True`` and say plainly why a refusal happened.

Shared by the ``.pt`` loader and the ``.pt2`` reader: a rejected GLOBAL (a class or function the
pickle names) means a Python object that only trust could load; any other rejection (an unknown
opcode, a short stream) means a damaged file, which trust would not fix.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import IO, Any

import torch

from studio.core.errors import ModelLoadError, TrustRequired


def load_weights_only(source: str | Path | IO[bytes], path: Path, what: str | None = None) -> Any:
    """``torch.load(source, weights_only=True)``; :class:`TrustRequired` for a pickled object,
    :class:`ModelLoadError` for damage. ``what`` names the record inside ``path``, if any."""
    inside = f" ({what})" if what else ""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" not in str(error):
            reason = next((line.strip() for line in str(error).splitlines()
                           if line.strip().startswith(("Unsupported", "Can only", "String"))),
                          "the pickle inside is malformed")
            raise ModelLoadError(f"{path}: a damaged torch file{inside} ({reason}); truncated "
                                 "or corrupt?") from error
        raise TrustRequired(path, f"it holds a pickled Python object{inside}, not only weights") \
            from error
