"""Where the files that ship with the app live, installed or in a source checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def resources_dir() -> Path:
    """The ``resources`` folder: inside the wheel as ``studio/_resources``, else the repo's."""
    installed = _PACKAGE_DIR / "_resources"
    if installed.is_dir():
        return installed
    return _PACKAGE_DIR.parent / "resources"


def resource_path(*parts: str) -> Path:
    return resources_dir().joinpath(*parts)
