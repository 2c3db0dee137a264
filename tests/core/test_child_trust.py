"""The job child (how the GUI runs jobs) honours the consent given in the window: a data
function beside the project runs only when the spec carries ``trust``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio.core.data.function import FunctionTrustRequired
from studio.core.jobs import CancelToken, Result
from studio.core.jobs.child import job_events

LOADER = '''
import torch

def digits():
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        yield torch.rand(16, 1, 28, 28, generator=generator)
'''


def _spec(folder: Path, trust: bool) -> dict:
    recipe = {"schema_version": 1, "model": {"path": "demo"},
              "data": {"source": "function", "path": "project_loader:digits",
                       "calibration_samples": 8},
              "train": {"epochs": 0}, "export": {"latency_repeats": 1, "latency_batch": 4}}
    return {"kind": "run", "recipe": recipe, "base_dir": str(folder),
            "out_dir": str(folder / "out"), "device": None, "trust": trust}


def test_function_beside_the_project_runs_only_with_consent(tmp_path: Path) -> None:
    (tmp_path / "project_loader.py").write_text(LOADER, encoding="utf-8")
    with pytest.raises(FunctionTrustRequired, match="project_loader:digits"):
        list(job_events(_spec(tmp_path, trust=False), CancelToken()))
    assert not (tmp_path / "out").exists()

    events = list(job_events(_spec(tmp_path, trust=True), CancelToken()))
    report = events[-1].report if isinstance(events[-1], Result) else None
    assert report is not None
    assert report["data"]["labelled"] is False and report["data"]["metric"] == "cosine"
    assert report["compressed"]["metric"]["value"] > 0.99  # nothing was compressed
    splits = json.loads((tmp_path / "out" / "splits.json").read_text())
    assert splits
