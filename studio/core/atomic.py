"""Write files so that a crash or a full disk never leaves half a file where a good one was."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

from studio.core.errors import StudioError


def create_beside(path: Path) -> tuple[int, Path]:
    """A new, empty, uniquely named file beside ``path``, open for writing.

    Made by hand rather than with ``tempfile.mkstemp``, which creates files 0600 whatever the
    umask: the file is renamed into place, so its mode must be the one any program's new file
    gets (0666 less the umask).
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    return os.open(temporary, flags, 0o666), temporary


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = create_beside(path)
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


def out_of_space(error: BaseException, folders: Iterable[str | Path], needed: int) -> str | None:
    """``"no space left on device (…)"`` when ``error`` (or its cause) is ENOSPC, or when one of
    ``folders`` has less than ``needed`` bytes free; else None.

    Libraries that write through C++ (onnx, onnxruntime) often do not report a full disk:
    they write a short file and later fail to parse it ("Failed to find proper ai.onnx
    domain"), so the free space is the only trustworthy sign.
    """
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            return "no space left on device"
        cause = cause.__cause__ or cause.__context__
    for folder in folders:
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        if free < needed:
            return f"no space left on device ({folder} has {free:,} bytes free)"
    return None
