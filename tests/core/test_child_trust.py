"""The job child (how the GUI runs jobs) honours the consent given in the window: a data
function beside the project runs only when the spec's ``data_consent`` names its code as it is
now (not ``trust`` alone, which covers a pickled model); Check Data runs there too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from studio.core.data.consent import locate_function
from studio.core.data.function import FunctionTrustRequired
from studio.core.engine.data_check import PROBE_FILE
from studio.core.jobs import CancelToken, Result
from studio.core.jobs.child import job_events

LOADER = '''
import torch

def digits():
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        yield torch.rand(16, 1, 28, 28, generator=generator)
'''


def _spec(folder: Path, trust: bool, consent: list | None = None, kind: str = "run") -> dict:
    recipe = {"schema_version": 1, "model": {"path": "demo"},
              "data": {"source": "function", "path": "project_loader:digits",
                       "calibration_samples": 8},
              "train": {"epochs": 0}, "export": {"latency_repeats": 1, "latency_batch": 4}}
    return {"kind": kind, "recipe": recipe, "base_dir": str(folder),
            "out_dir": str(folder / "out"), "device": None, "trust": trust,
            "data_consent": consent or []}


def test_function_beside_the_project_runs_only_with_consent(tmp_path: Path) -> None:
    (tmp_path / "project_loader.py").write_text(LOADER, encoding="utf-8")
    with pytest.raises(FunctionTrustRequired, match="project_loader:digits"):
        list(job_events(_spec(tmp_path, trust=False), CancelToken()))
    with pytest.raises(FunctionTrustRequired, match="project_loader:digits"):
        list(job_events(_spec(tmp_path, trust=True), CancelToken()))  # a pickle's trust
    assert not (tmp_path / "out").exists()

    consent = [locate_function("project_loader:digits", tmp_path).to_json()]
    events = list(job_events(_spec(tmp_path, False, consent), CancelToken()))
    report = events[-1].report if isinstance(events[-1], Result) else None
    assert report is not None
    assert report["data"]["labelled"] is False and report["data"]["metric"] == "cosine"
    assert report["compressed"]["metric"]["value"] > 0.99  # nothing was compressed
    splits = json.loads((tmp_path / "out" / "splits.json").read_text())
    assert splits


def test_changed_code_is_refused_and_check_data_reports(tmp_path: Path) -> None:
    (tmp_path / "project_loader.py").write_text(LOADER, encoding="utf-8")
    consent = [locate_function("project_loader:digits", tmp_path).to_json()]
    events = list(job_events(_spec(tmp_path, False, consent, "check_data"), CancelToken()))
    report = events[-1].report
    assert report["sizes"]["calibration"] == 8 and report["samples"] == [["", "1×28×28 float32"]]
    assert report["problem"] is None and report["metric"] == "cosine"
    probe = np.load(tmp_path / "out" / PROBE_FILE, allow_pickle=False)["input"]
    assert probe.shape == (2, 1, 28, 28) and probe.dtype == np.float32

    (tmp_path / "project_loader.py").write_text(LOADER.replace("16, 1, 28", "16, 3, 28"), "utf-8")
    with pytest.raises(FunctionTrustRequired, match="not the code you allowed"):
        list(job_events(_spec(tmp_path, False, consent, "check_data"), CancelToken()))
    consent = [locate_function("project_loader:digits", tmp_path).to_json()]
    report = list(job_events(_spec(tmp_path, False, consent, "check_data"),
                             CancelToken()))[-1].report
    assert report["samples"] == [["", "3×28×28 float32"]]


def test_check_data_names_token_ids_beyond_the_vocabulary(tmp_path: Path) -> None:
    ids = np.arange(40).reshape(10, 4)
    np.savez(tmp_path / "ids.npz", input_ids=ids)
    spec = _spec(tmp_path, False, kind="check_data")
    spec["recipe"]["data"] = {"source": "arrays", "path": "ids.npz"}
    spec["vocabulary"] = ["the model's vocabulary", 30]
    report = list(job_events(spec, CancelToken()))[-1].report
    assert report["problem"].startswith("data: token ids must lie in 0..29 (the model's "
                                        "vocabulary holds 30 tokens), but the data holds 10 "
                                        "id(s) out of range: 30, 31,")
