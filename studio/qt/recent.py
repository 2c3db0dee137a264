"""Recently opened models and projects, remembered in the user's Qt settings."""

from __future__ import annotations

from PySide6.QtCore import QSettings

_KEY = "recent_files"
MAX_RECENT = 10


class RecentFiles:
    def __init__(self, settings: QSettings) -> None:
        self.settings = settings

    def paths(self) -> list[str]:
        value = self.settings.value(_KEY, [])
        if isinstance(value, str):  # QSettings returns a lone string for a one-item list
            value = [value]
        return [str(v) for v in value or []]

    def add(self, path: str) -> None:
        paths = [path, *(p for p in self.paths() if p != path)][:MAX_RECENT]
        self.settings.setValue(_KEY, paths)

    def remove(self, path: str) -> None:
        self.settings.setValue(_KEY, [p for p in self.paths() if p != path])
