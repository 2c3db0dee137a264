"""The typed sensitivity report: a sweep's JSON round-trips, a sensitivity.json written before
the report was typed (copied from what main wrote) still loads through the project's studies,
and a file that is no sweep is named, not raised as a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from studio.core.engine.sensitivity import sensitivity_workspace
from studio.core.errors import StudioError
from studio.core.jobs import CancelToken, Result
from studio.core.project.studies import SENSITIVITY_FILE, load_sensitivity, save_sensitivity
from studio.core.reports.sensitivity_report import SCHEMA_VERSION, SensitivityReport
from studio.core.workspace import open_workspace

SWEEP_V0 = Path(__file__).parent / "fixtures" / "sensitivity_v0.json"


def test_old_sensitivity_json_loads_and_is_rewritten_with_a_version(tmp_path: Path) -> None:
    shutil.copy(SWEEP_V0, tmp_path / SENSITIVITY_FILE)
    report = load_sensitivity(tmp_path)
    assert report is not None and report.schema_version == SCHEMA_VERSION
    assert report.metric == "accuracy" and report.baseline.higher_is_better
    assert report.baseline.value == pytest.approx(0.98)
    assert report.layers == ["stem.0", "res.conv2"]
    assert report.sparsity.rows(report.layers)["stem.0"] == [pytest.approx(0.22)]
    assert report.bits.levels == ["int4"] and report.groups["res.conv2"] == ["res.conv2"]

    save_sensitivity(tmp_path, report)
    written = json.loads((tmp_path / SENSITIVITY_FILE).read_text())
    old = json.loads(SWEEP_V0.read_text())
    assert written == old | {"schema_version": SCHEMA_VERSION}  # same keys, now versioned
    assert load_sensitivity(tmp_path) == report


def test_a_real_sweep_round_trips_with_its_metric_direction(tmp_path: Path) -> None:
    task_free = list(sensitivity_workspace(open_workspace("demo"), CancelToken(), (0.5,),
                                           (), "channels", subset=40,
                                           layers=["res.conv2", "head.2"]))
    assert isinstance(task_free[-1], Result)
    report = SensitivityReport.from_json(task_free[-1].report)
    assert report.sparsity.rows(report.layers)["head.2"] == [None]  # could not be cut
    assert report.bits.levels == [] and report.bits.drop == [[], []]
    save_sensitivity(tmp_path, report)
    assert load_sensitivity(tmp_path) == report
    assert report.to_json() == task_free[-1].report


@pytest.mark.parametrize(("content", "problem"), [
    ('{"kind": "run"}', "not a sensitivity report"),
    ('[1, 2]', "JSON object"),
    ('{"kind": "sensitivity", "baseline": 0.9}', "KeyError"),
    ('{"kind": "sensitivity", "baseline": 0.9, "layers": ["a"], '
     '"sparsity": {"levels": [0.5], "drop": [[0.1, 0.2]]}}', "1 layers × 1 levels"),
    ('{"kind": "sensitivity", "schema_version": 99, "baseline": 0.9, "layers": []}',
     "newer than this studio"),
])
def test_a_file_that_is_no_sweep_is_named(tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / SENSITIVITY_FILE).write_text(content)
    with pytest.raises(StudioError, match=problem) as error:
        load_sensitivity(tmp_path)
    assert SENSITIVITY_FILE in str(error.value)
