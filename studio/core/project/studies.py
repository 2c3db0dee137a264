"""Studies kept in the project beside its experiments: the latest sensitivity sweep.

Stored by the core, like experiments, so the CLI, the GUI and later searches read and write the
same file; written atomically, so a crash mid-write keeps the previous sweep.
"""

from __future__ import annotations

import json
from pathlib import Path

from studio.core.atomic import write_text_atomic
from studio.core.errors import StudioError
from studio.core.reports.sensitivity_report import SensitivityReport

SENSITIVITY_FILE = "sensitivity.json"


def save_sensitivity(project_dir: str | Path, report: SensitivityReport) -> Path:
    path = Path(project_dir) / SENSITIVITY_FILE
    write_text_atomic(path, json.dumps(report.to_json(), indent=1) + "\n")
    return path


def load_sensitivity(project_dir: str | Path) -> SensitivityReport | None:
    """The project's sweep (of any schema version so far); ``None`` when it has none. A
    damaged file raises :class:`StudioError` naming it (the caller shows it and carries on
    without)."""
    path = Path(project_dir) / SENSITIVITY_FILE
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise StudioError(f"{path}: could not be read ({error})") from error
    try:
        return SensitivityReport.from_json(report)
    except ValueError as error:
        raise StudioError(f"{path}: could not be read ({error})") from error
