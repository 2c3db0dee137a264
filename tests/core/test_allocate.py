"""Target-driven allocation: synthetic reports check the greedy's choices, a real sweep on the
demo checks the whole path from sensitivity to an editable plan."""

from __future__ import annotations

import pytest

from studio.core.engine.allocate import Target, allocate
from studio.core.engine.sensitivity import sensitivity_workspace
from studio.core.errors import StudioError
from studio.core.jobs import CancelToken, Result
from studio.core.plan.estimate import estimate
from studio.core.plan.plan import Plan
from studio.core.plan.spec import LayerSpec
from studio.core.reports.sensitivity_report import SensitivityReport
from studio.core.workspace import Workspace, open_workspace

LAYERS = ["stem.0", "block1.0", "block2.0", "res.conv1.0", "res.conv2", "head.2"]


def _report(granularity: str = "unstructured") -> SensitivityReport:
    """res.conv2 and block2.0 barely care; res.conv1.0 and block1.0 care a lot."""
    sensitive = {"stem.0": 0.3, "block1.0": 0.5, "block2.0": 0.002, "res.conv1.0": 0.6,
                 "res.conv2": 0.001, "head.2": 0.2}
    groups = {name: [name] for name in LAYERS}
    if granularity == "channels":
        groups["block2.0"] = groups["res.conv2"] = ["res.conv2", "block2.0"]
    return SensitivityReport.from_json({
        "kind": "sensitivity", "metric": "accuracy", "baseline": 0.99, "subset": 100,
        "granularity": granularity, "layers": LAYERS,
        "sparsity": {"levels": [0.25, 0.5, 0.75],
                     "drop": [[s * 0.2, s * 0.5, s] if name != "head.2" else [None] * 3
                              for name, s in sensitive.items()]},
        "bits": {"levels": ["int8", "int4", "int2"],
                 "drop": [[s * 0.05, s * 0.3, s * 1.5] for s in sensitive.values()]},
        "groups": groups,
    })


@pytest.fixture
def workspace() -> Workspace:
    return open_workspace("demo")


def test_least_sensitive_layers_go_first(workspace: Workspace) -> None:
    result = allocate(workspace.tree, _report(), Target("size", 0.5))
    assert result.met
    first = {step.split()[-1] for step in result.steps[:2]}
    assert first == {"res.conv2", "block2.0"}
    assert result.chosen["res.conv1.0"][1] in (None, "int8")


def test_size_target_is_met_by_the_plans_estimate(workspace: Workspace) -> None:
    result = allocate(workspace.tree, _report(), Target("size", 0.5))
    figures = estimate(workspace.tree, result.plan.resolve(workspace.tree))
    assert figures.ratio("nbytes") <= 0.5
    assert result.estimate == figures
    assert isinstance(result.plan, Plan)
    result.plan.set_field("stem.0", "sparsity", 0.3)  # an ordinary, editable plan
    assert result.predicted_drop < 0.05


def test_channels_move_coupled_layers_together_and_cut_macs(workspace: Workspace) -> None:
    result = allocate(workspace.tree, _report("channels"), Target("macs", 0.8))
    assert result.met and result.estimate.ratio("macs") <= 0.8
    assert result.chosen["res.conv2"][0] == result.chosen["block2.0"][0] > 0
    assert result.plan.spec("res.conv2").granularity == "channels"


def test_pinned_layers_keep_their_spec(workspace: Workspace) -> None:
    pin = LayerSpec(weight_bits="int8")
    result = allocate(workspace.tree, _report(), Target("size", 0.5), {"res.conv2": pin})
    assert result.plan.spec("res.conv2") == pin
    assert "res.conv2" not in result.chosen
    assert result.estimate.ratio("nbytes") <= 0.5


def test_a_pin_the_backend_cannot_honour_shows_in_the_estimate(workspace: Workspace) -> None:
    """fp16 cannot share one ORT model with int8 layers: the estimate counts the pinned layer
    as fp32, as the engine will store it, and says so."""
    pin = LayerSpec(weight_bits="fp16")
    result = allocate(workspace.tree, _report(), Target("size", 0.5), {"res.conv2": pin})
    assert result.plan.spec("res.conv2") == pin
    assert any("fp16 layers cannot share one ORT model with int8 layers" in note
               for note in result.estimate.notes)


def test_impossible_target_says_so(workspace: Workspace) -> None:
    result = allocate(workspace.tree, _report(), Target("size", 0.01))
    assert not result.met
    assert any("cannot be reached" in note for note in result.notes)


def test_accuracy_drop_budget(workspace: Workspace) -> None:
    result = allocate(workspace.tree, _report(), Target("accuracy_drop", 0.5))
    assert result.met and result.predicted_drop <= 0.005
    assert result.estimate.ratio("nbytes") < 1.0
    with pytest.raises(StudioError):
        Target("size", 25)


def test_real_sweep_then_allocation(workspace: Workspace) -> None:
    events = list(sensitivity_workspace(workspace, CancelToken(), (0.5,), ("int8", "int4"),
                                        subset=100, layers=["block1.0", "res.conv1.0",
                                                            "res.conv2"]))
    assert isinstance(events[-1], Result)
    report = SensitivityReport.from_json(events[-1].report)
    result = allocate(workspace.tree, report, Target("size", 0.4))
    assert result.met and result.estimate.ratio("nbytes") <= 0.4
    resolved = result.plan.resolve(workspace.tree)  # valid against the tree
    assert {resolved[workspace.tree.get(name).id].weight_bits
            for name in result.chosen} <= {None, "int8", "int4"}
