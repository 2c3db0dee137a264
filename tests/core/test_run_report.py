"""Typed run reports: written with a schema_version, read back equal, and the reports written
before there was one (main before the pipeline; the first engine's, whose ``data`` was a name)
still load, with each metric under its own name and direction."""

from __future__ import annotations

import json
import math

import pytest

from studio.core.project.experiments import Experiment, experiment_point
from studio.core.reports.run_report import SCHEMA_VERSION, RunReport

_FIGURES = {"params": 102570, "nonzero_params": 58334, "macs": 25515136, "onnx_bytes": 112653,
            "zip_bytes": 74749, "parity": {"max_abs_diff": 0.338, "top1_agreement": 0.999},
            "latency_ms": {"batch_1": 0.2588, "batch_8": 1.1244}}
# Copied from a report.json that main wrote before the pipeline (ONNX-only run, trimmed).
BEFORE_PIPELINE = {
    "recipe": "recipe", "model": "demo11", "source_format": "onnx",
    "data": {"name": "demo digits (MNIST 4,000 / 1,000)", "source": "demo", "labelled": True,
             "metric": "cosine", "num_classes": None,
             "sizes": {"train": 4000, "fine_tune": 4000, "calibration": 64, "test": 1000}},
    "device": "cpu (onnxruntime)",
    "baseline": {"metric": {"name": "cosine", "value": 1.0, "higher_is_better": True},
                 "agreement": {"cosine": 1.0, "top1_agreement": 1.0, "mse": 0.0},
                 **_FIGURES},
    "compressed": {"metric": {"name": "cosine", "value": 0.983, "higher_is_better": True},
                   "agreement": {"cosine": 0.983, "top1_agreement": 0.991, "mse": 0.82},
                   **_FIGURES},
    "stages": {"repair": {"steps": []}, "prune": {"mode": "per-layer", "layers": {},
                                                 "structured_skipped": []}},
    "notes": ["Unstructured and N:M zeros are stored densely."],
    "elapsed_s": 0.99,
    "paths": {"model": "out/model.onnx", "report": "out/report.json"}}
# The first engine's report: data was a name, no agreement, no source_format, a seed.
FIRST_ENGINE = {"recipe": "r.yaml", "model": "demo-cnn", "data": "demo digits",
                "device": "cpu", "seed": 0,
                "baseline": {"metric": {"name": "accuracy", "value": 0.985}, **_FIGURES},
                "compressed": {"metric": {"name": "accuracy", "value": 0.98}, **_FIGURES},
                "stages": {"prune": {"notes": []}}, "notes": [], "elapsed_s": 3.2,
                "paths": {"model": "m.onnx"}}


def test_a_report_round_trips_with_its_schema_version() -> None:
    report = RunReport.from_json(BEFORE_PIPELINE)
    data = json.loads(json.dumps(report.to_json()))
    assert data["schema_version"] == SCHEMA_VERSION
    assert RunReport.from_json(data) == report
    assert {k: v for k, v in data.items() if k != "schema_version"} == BEFORE_PIPELINE


def test_old_reports_load_with_their_metric_named() -> None:
    old = RunReport.from_json(BEFORE_PIPELINE)
    assert old.metric == "cosine" and old.compressed.metric.higher_is_better
    assert old.compressed.agreement is not None and old.seed is None
    first = RunReport.from_json(FIRST_ENGINE)
    assert first.data == "demo digits" and first.source_format == "torch"
    assert first.compressed.agreement is None and first.seed == 0
    assert math.isclose(first.compressed.metric.value, 0.98)
    assert first.compressed.metric.higher_is_better  # read from the name when not written


def test_an_old_experiment_gives_its_point_under_the_metric_s_name() -> None:
    experiment = Experiment.from_json({"id": "1", "name": "n", "created": "2026-01-01",
                                       "report": BEFORE_PIPELINE})
    point = experiment_point(experiment)
    assert point["metric"] == "cosine" and point["value"] == 0.983
    assert point["latency_ms"] == 1.1244  # the largest batch timed


@pytest.mark.parametrize("bad", [[], {"baseline": {}}, {**BEFORE_PIPELINE,
                                                         "schema_version": 99}])
def test_what_is_not_a_run_report_is_refused(bad) -> None:
    with pytest.raises(ValueError):
        RunReport.from_json(bad)
