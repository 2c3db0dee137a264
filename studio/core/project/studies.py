"""Studies kept in the project beside its experiments: the latest sensitivity sweep.

Stored by the core, like experiments, so the CLI, the GUI and later searches read and write the
same file; written atomically, so a crash mid-write keeps the previous sweep.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from studio.core.atomic import write_text_atomic
from studio.core.errors import StudioError

SENSITIVITY_FILE = "sensitivity.json"


def save_sensitivity(project_dir: str | Path, report: dict[str, Any]) -> Path:
    path = Path(project_dir) / SENSITIVITY_FILE
    write_text_atomic(path, json.dumps(report, indent=1) + "\n")
    return path


def load_sensitivity(project_dir: str | Path) -> dict[str, Any] | None:
    """The project's sweep; ``None`` when it has none. A damaged file raises
    :class:`StudioError` naming it (the caller shows it and carries on without)."""
    path = Path(project_dir) / SENSITIVITY_FILE
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise StudioError(f"{path}: could not be read ({error})") from error
    if not isinstance(report, dict):
        raise StudioError(f"{path}: could not be read (not a JSON object)")
    return report
