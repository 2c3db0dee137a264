"""Write files so that a crash or a full disk never leaves half a file where a good one was."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from studio.core.errors import StudioError


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                             dir=path.parent)
    except OSError as error:
        raise StudioError(f"cannot write {path}: {error.strerror or error}") from error
    try:
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked (and a full disk fails here)
                view = view[os.write(handle, view):]
            os.fsync(handle)
        finally:
            os.close(handle)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise StudioError(
            f"cannot write {path}: {error.strerror or error}; the previous file is unchanged"
        ) from error


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
