"""Sensitivity sweeps on the demo: one value per layer and level, the model left as it was,
coupled layers reported together, cancel within one evaluation."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from studio.core.data.task import demo_task
from studio.core.engine.sensitivity import (
    SweepSize,
    cell_name,
    estimate_runtime_s,
    measure_seconds_per_eval,
    parse_cell_name,
    sensitivity_job,
    sensitivity_workspace,
)
from studio.core.jobs import CancelToken, JobCancelled, Metric, Progress, Result
from studio.core.methods.quantization.grid import fake_quantize_weight
from studio.core.plan.recipe import parse_recipe
from studio.core.reports.sensitivity_report import SensitivityReport
from studio.core.workspace import Workspace, open_workspace

LAYERS = ["stem.0", "block1.0", "res.conv1.0"]
LEVELS = (0.25, 0.5, 0.9)
BITS = ("int8", "int2")


def _result(events: list[Any]) -> SensitivityReport:
    """The Result event's JSON, read back as the typed report the project stores."""
    assert isinstance(events[-1], Result)
    assert events[-1].report["schema_version"] == 1
    return SensitivityReport.from_json(events[-1].report)


@pytest.fixture(scope="module")
def unstructured() -> tuple[Workspace, dict[str, torch.Tensor], list[Any]]:
    workspace = open_workspace("demo")
    assert workspace.loaded.module is not None
    before = {k: v.clone() for k, v in workspace.loaded.module.state_dict().items()}
    events = list(sensitivity_workspace(workspace, CancelToken(), LEVELS, BITS,
                                        subset=200, layers=LAYERS))
    return workspace, before, events


def test_one_value_per_layer_and_level(unstructured: Any) -> None:
    _, _, events = unstructured
    report = _result(events)
    assert report.subset == 200 and report.metric == "accuracy"
    assert report.layers == LAYERS and 0.9 < report.baseline.value <= 1.0
    assert report.baseline.higher_is_better
    assert report.sparsity.levels == list(LEVELS)
    assert report.bits.levels == list(BITS)
    for sweep, levels in (("sparsity", LEVELS), ("bits", BITS)):
        rows = report.sweep(sweep).drop
        assert len(rows) == len(LAYERS)
        assert all(len(row) == len(levels) and None not in row for row in rows)
    cells = [parse_cell_name(e.name) for e in events
             if isinstance(e, Metric) and e.name != "baseline"]
    assert len(cells) == len(LAYERS) * (len(LEVELS) + len(BITS))
    assert ("sparsity", "0.9", "res.conv1.0") in cells
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].done == progress[-1].total == 1 + len(cells)


def test_drops_grow_with_sparsity_and_fewer_bits(unstructured: Any) -> None:
    report = _result(unstructured[2])
    rows = report.sparsity.drop
    growing = sum(row[-1] >= row[0] - 0.005 for row in rows)  # one sample of 200 is 0.005
    assert growing >= len(rows) - 1
    assert max(row[-1] for row in rows) > 0.05  # 90% of the first layers really hurts
    bits = report.bits.drop
    assert sum(row[1] >= row[0] for row in bits) >= len(bits) - 1


def test_model_is_unchanged(unstructured: Any) -> None:
    workspace, before, _ = unstructured
    after = workspace.loaded.module.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_channels_report_coupled_layers_together() -> None:
    workspace = open_workspace("demo")
    events = list(sensitivity_workspace(workspace, CancelToken(), (0.5,), (), "channels",
                                        subset=100, layers=["block2.0", "res.conv2", "head.2"]))
    report = _result(events)
    assert sorted(report.groups["res.conv2"]) == ["block2.0", "res.conv2"]
    rows = report.sparsity.rows(report.layers)
    assert rows["block2.0"] == rows["res.conv2"] and rows["res.conv2"][0] is not None
    assert rows["head.2"] == [None] and "output" in report.skipped["head.2"]
    assert report.evaluations == 3  # baseline, the coupled group once, head.2 counted


def test_cancel_stops_within_one_evaluation() -> None:
    recipe = parse_recipe("schema_version: 1\nmodel: {path: demo}\n")
    token = CancelToken()
    events = sensitivity_job(recipe, None, token, (0.5,), ("int8",), subset=100)
    seen = []
    with pytest.raises(JobCancelled):
        for event in events:
            seen.append(event)
            if isinstance(event, Progress) and event.done == 2:
                token.cancel()
    # no evaluation after the cancel: the outcome, not the wall time (the machine may be slow)
    assert [e.done for e in seen if isinstance(e, Progress)] == [1, 2]


def test_runtime_estimate_scales_with_layers_and_levels() -> None:
    workspace = open_workspace("demo")
    seconds = measure_seconds_per_eval(workspace, subset=100, repeats=1)
    assert seconds > 0
    small = estimate_runtime_s((3, 2, 100), seconds)
    assert small == pytest.approx(7 * seconds)
    assert estimate_runtime_s((6, 4, 100), seconds) == pytest.approx(25 * seconds)
    assert estimate_runtime_s(SweepSize(3, 2, 200), seconds, measured_subset=100) \
        == pytest.approx(2 * small)
    assert estimate_runtime_s(workspace, seconds) == pytest.approx(37 * seconds)


def test_the_estimate_times_unlabelled_data_too() -> None:
    workspace = open_workspace("demo")
    task = demo_task()
    unlabelled = dataclasses.replace(task, test=TensorDataset(task.test.tensors[0]),
                                     labelled=False, metric="cosine")
    assert measure_seconds_per_eval(workspace, subset=50, repeats=1, task=unlabelled) > 0


def test_fake_quantization_and_cell_names() -> None:
    weight = torch.randn(4, 3, 3, 3)
    assert torch.allclose(fake_quantize_weight(weight, "int8"), weight, atol=0.02)
    assert len(fake_quantize_weight(weight, "int2")[0].unique()) <= 3
    assert parse_cell_name(cell_name("bits", "int4", "res.conv2")) == ("bits", "int4",
                                                                       "res.conv2")
