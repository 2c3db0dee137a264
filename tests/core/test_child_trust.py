"""The job child (how the GUI runs jobs) honours the consent given in the window: a data
function beside the project runs only when the spec's ``data_consent`` names its code as it is
now (not ``trust`` alone, which covers a pickled model or an architecture outside the
registry); Check Data runs there too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from studio.core.data.consent import locate_function
from studio.core.data.function import FunctionTrustRequired
from studio.core.engine.data_check import PROBE_FILE
from studio.core.errors import ArchitectureConsentRequired, StudioError
from studio.core.jobs import CancelToken, Result, kinds
from studio.core.jobs.child import job_events
from studio.core.jobs.kinds import KINDS, JobSpec
from studio.core.plan.recipe import read_recipe
from tests.core.crafted import project_naming_its_architecture

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


def _events(spec: dict) -> list:
    """The job's events, its spec read as the child reads it."""
    parsed = JobSpec.from_json(json.loads(json.dumps(spec)))
    assert JobSpec.from_json(parsed.to_json()) == parsed
    return list(job_events(parsed, CancelToken()))


def test_function_beside_the_project_runs_only_with_consent(tmp_path: Path) -> None:
    (tmp_path / "project_loader.py").write_text(LOADER, encoding="utf-8")
    with pytest.raises(FunctionTrustRequired, match="project_loader:digits"):
        _events(_spec(tmp_path, trust=False))
    with pytest.raises(FunctionTrustRequired, match="project_loader:digits"):
        _events(_spec(tmp_path, trust=True))  # a pickle's trust
    assert not (tmp_path / "out").exists()

    consent = [locate_function("project_loader:digits", tmp_path).to_json()]
    events = _events(_spec(tmp_path, False, consent))
    report = events[-1].report if isinstance(events[-1], Result) else None
    assert report is not None
    assert report["data"]["labelled"] is False and report["data"]["metric"] == "cosine"
    assert report["compressed"]["metric"]["value"] > 0.99  # nothing was compressed
    splits = json.loads((tmp_path / "out" / "splits.json").read_text())
    assert splits


def test_changed_code_is_refused_and_check_data_reports(tmp_path: Path) -> None:
    (tmp_path / "project_loader.py").write_text(LOADER, encoding="utf-8")
    consent = [locate_function("project_loader:digits", tmp_path).to_json()]
    events = _events(_spec(tmp_path, False, consent, "check_data"))
    report = events[-1].report
    assert report["sizes"]["calibration"] == 8 and report["samples"] == [["", "1×28×28 float32"]]
    assert report["problem"] is None and report["metric"] == "auto"  # the window settles it
    probe = np.load(tmp_path / "out" / PROBE_FILE, allow_pickle=False)["input"]
    assert probe.shape == (2, 1, 28, 28) and probe.dtype == np.float32

    (tmp_path / "project_loader.py").write_text(LOADER.replace("16, 1, 28", "16, 3, 28"), "utf-8")
    with pytest.raises(FunctionTrustRequired, match="not the code you allowed"):
        _events(_spec(tmp_path, False, consent, "check_data"))
    consent = [locate_function("project_loader:digits", tmp_path).to_json()]
    report = _events(_spec(tmp_path, False, consent, "check_data"))[-1].report
    assert report["samples"] == [["", "3×28×28 float32"]]


def test_check_data_names_token_ids_beyond_the_vocabulary(tmp_path: Path) -> None:
    ids = np.arange(40).reshape(10, 4)
    np.savez(tmp_path / "ids.npz", input_ids=ids)
    spec = _spec(tmp_path, False, kind="check_data")
    spec["recipe"]["data"] = {"source": "arrays", "path": "ids.npz"}
    spec["options"] = {"vocabulary": ["the model's vocabulary", 30]}
    report = _events(spec)[-1].report
    assert report["problem"].startswith("data: token ids must lie in 0..29 (the model's "
                                        "vocabulary holds 30 tokens), but the data holds 10 "
                                        "id(s) out of range: 30, 31,")


def test_an_unknown_kind_is_named_with_the_known_ones(tmp_path: Path) -> None:
    spec = JobSpec.from_json(_spec(tmp_path, False, kind="prune-all"))
    with pytest.raises(StudioError, match="unknown job kind 'prune-all'; known: run, "):
        list(kinds.job_events(spec, CancelToken()))
    assert {"run", "sensitivity", "check_data"} <= set(KINDS)


def test_an_architecture_outside_the_registry_is_called_only_with_the_windows_trust(
        tmp_path: Path, monkeypatch, valid_model_files) -> None:
    marker = tmp_path / "code-ran.txt"
    manifest, architecture = project_naming_its_architecture(
        tmp_path / "project", valid_model_files[".pt"], marker, runnable=True)
    monkeypatch.syspath_prepend(str(manifest.parent))
    spec = _spec(manifest.parent, trust=False)
    project = read_recipe(manifest).model_dump(mode="json")
    spec["recipe"].update(model=project["model"], example_input=project["example_input"])
    spec["recipe"]["data"] = {"source": "arrays", "path": "digits.npz", "calibration_samples": 8}
    with pytest.raises(ArchitectureConsentRequired, match=architecture):
        _events(spec)
    assert not marker.exists() and not (manifest.parent / "out").exists()

    allowed = {**spec, "architecture": architecture}  # what the window sends once allowed
    events = _events(allowed)
    assert isinstance(events[-1], Result) and events[-1].report["compressed"]["params"] > 0
    assert marker.read_text().startswith("imported\ncalled\n")

    # allowing the architecture does not make the model file trusted: a pickle stays refused
    import torch

    from studio.core.errors import TrustRequired
    torch.save(torch.nn.Linear(2, 2), manifest.parent / "weights.pt")
    with pytest.raises(TrustRequired, match="pickled Python object"):
        _events({**allowed, "out_dir": str(tmp_path / "out2")})


def test_consent_to_a_data_function_never_extends_to_the_model_file(
        tmp_path: Path, valid_model_files) -> None:
    """Allowing the project's data function lets that code run, not a pickle hidden in the
    model: the child opens the model with the spec's own ``trust`` alone."""
    from studio.core.errors import TrustRequired
    from tests.core.crafted import pt2_with_pickled_weight

    (tmp_path / "project_loader.py").write_text(LOADER, encoding="utf-8")
    marker = tmp_path / "code-ran.txt"
    pt2_with_pickled_weight(valid_model_files[".pt2"], tmp_path / "model.pt2", marker)
    consent = [locate_function("project_loader:digits", tmp_path).to_json()]
    spec = _spec(tmp_path, False, consent)
    spec["recipe"]["model"] = {"path": "model.pt2"}
    with pytest.raises(TrustRequired, match="pickled Python object"):
        _events(spec)
    assert not marker.exists() and not (tmp_path / "out").exists()
