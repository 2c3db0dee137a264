"""How much memory a file may make the studio allocate, checked before allocating it.

A few megabytes on disk can declare gigabytes: a deflated zip member of zeros, a tensor whose
record is empty but whose sizes are huge, a config with enormous dimensions. Every loader checks
what a file declares against these limits first, so a bad file costs a clear line, not the
machine.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from studio.core.errors import ModelLoadError, TooLargeError

FALLBACK_MEMORY = 8 << 30
"""Assumed memory where the system does not say (bytes)."""
MAX_COMPRESSION_RATIO = 100
"""Unpacked / packed size above which a zip member is a compression bomb (weights compress
about 1.1×; only runs of zeros compress 100× or more)."""
MAX_METADATA_CHARS = 1 << 16
"""Longest metadata value or doc string kept from a model file (64 KiB): the studio reads only
short ones (scope lists are a few hundred characters), and each copy of the model would copy
longer ones again."""
RATIO_FREE_BYTES = 64 << 20
"""Members this small are never refused for their ratio (a zero-filled buffer, a config)."""


def memory_budget() -> int:
    """Bytes a file may unpack to: the machine's physical memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return FALLBACK_MEMORY


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def check_declared_bytes(path: Path, declared: int, what: str) -> None:
    """Refuse a file whose ``what`` declares more bytes than the machine has memory."""
    budget = memory_budget()
    if declared > budget:
        raise TooLargeError(f"{path}: {what} would take {_gb(declared)} of memory, more than "
                            f"the {_gb(budget)} this machine has; refusing to read it")


def check_zip_members(path: Path) -> None:
    """Refuse a zip archive (``torch.save``, ``.pt2``) that unpacks to more than memory holds,
    or holding a member packed more tightly than real data packs (a compression bomb). Sizes
    come from the central directory; torch's reader allocates exactly those."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, UnicodeDecodeError, ValueError, EOFError, OSError):
        return  # damaged: the format's own reader gives the message
    check_declared_bytes(path, sum(member.file_size for member in members), "its contents")
    file_size = path.stat().st_size
    for member in members:
        packed = max(member.compress_size, 1)
        if packed > file_size:
            raise ModelLoadError(f"{path}: {member.filename!r} claims {packed:,} bytes, more than "
                                f"the whole file ({file_size:,}); truncated or corrupt?")
        too_tight = member.file_size > MAX_COMPRESSION_RATIO * packed
        if member.file_size > RATIO_FREE_BYTES and too_tight:
            raise TooLargeError(
                f"{path}: {member.filename!r} unpacks to {_gb(member.file_size)} from "
                f"{packed / 1e6:.1f} MB ({member.file_size // packed}× packed): a compression "
                "bomb, not weights; refusing to read it")
