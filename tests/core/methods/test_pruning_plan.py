"""The entry point: a plan's layers split by granularity, structured first, masks after, and a
JSON-ready report whose figures match the re-traced model."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.utils.data import TensorDataset

from studio.core.data.task import TaskData
from studio.core.graph.torch_tree import build_torch_tree
from studio.core.jobs import CancelToken
from studio.core.methods.pruning import apply_plan_pruning, partition_plan
from studio.core.methods.pruning.masks import layer_weight
from studio.core.methods.pruning.nm import follows_nm
from studio.core.models.inputs import InputSpec
from studio.core.plan import LayerSpec, Plan
from studio.core.train.loop import TrainConfig, train
from studio.core.workspace import Workspace

EXAMPLE = torch.zeros(1, 1, 28, 28)




def _mixed_plan() -> Plan:
    return Plan({
        "": LayerSpec(sparsity=0.5, granularity="channels"),
        "block1.0": LayerSpec(granularity="unstructured", sparsity=0.7),
        "res.conv1.0": LayerSpec(granularity="2:4"),
        "head": LayerSpec(exclude=True),
    })


def test_the_plan_is_split_by_granularity(demo: Workspace) -> None:
    partition = partition_plan(demo.tree, _mixed_plan().resolve(demo.tree))
    assert partition.channels == {"stem.0": 0.5, "block2.0": 0.5, "res.conv2": 0.5}
    assert partition.unstructured == {"block1.0": 0.7}
    assert partition.nm == {"res.conv1.0": (2, 4)}
    assert partition.excluded == ["head.2"]


def test_a_mixed_plan_cuts_channels_then_masks(demo: Workspace, task: TaskData) -> None:
    model = copy.deepcopy(demo.loaded.module)
    result = apply_plan_pruning(model, demo.tree, _mixed_plan().resolve(demo.tree), EXAMPLE)
    report = json.loads(json.dumps(result.report))  # JSON-ready
    assert model.stem[0].out_channels == 16
    assert model.res.conv2.out_channels == model.block2[0].out_channels == 32
    assert model.block1[0].out_channels == 32 and model.res.conv1[0].out_channels == 64
    assert model.head[2].out_features == 10
    # Masks are drawn on the cut shapes: block1.0 lost input channels to the stem first.
    assert layer_weight(model, "block1.0").shape == (32, 16, 3, 3)
    assert report["unstructured"]["layers"]["block1.0"]["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert follows_nm(layer_weight(model, "res.conv1.0"), 2, 4)
    assert report["nm"]["layers"]["res.conv1.0"] == {"pattern": "2:4", "sparsity": 0.5,
                                                    "dense_tail": 0}
    assert set(result.masks) == {"block1.0", "res.conv1.0"}
    tree = build_torch_tree(model, InputSpec((1, 1, 28, 28)), "pruned")
    assert report["after"] == {"params": tree.root.total_params,
                               "nonzero_params": tree.root.total_params - tree.root.total_zeros,
                               "macs": tree.root.total_macs}
    assert report["after"]["nonzero_params"] < report["after"]["params"] \
        < report["before"]["params"]
    assert report["excluded"] == ["head.2"]
    assert any("stored densely" in note for note in report["notes"])
    assert any("rebuild the layer tree" in note for note in report["notes"])
    # The masks hold through fine-tuning steps.
    subset = TensorDataset(*(t[:128] for t in task.train.tensors))
    for _ in train(model, subset, TrainConfig(lr=1e-2), CancelToken(),
                   after_step=result.masks.hook(model)):
        pass
    assert follows_nm(layer_weight(model, "res.conv1.0"), 2, 4)
    assert torch.count_nonzero(layer_weight(model, "block1.0")[~result.masks["block1.0"]]) == 0


def test_global_unstructured_keeps_the_total_and_moves_it_between_layers(
        demo: Workspace) -> None:
    model = copy.deepcopy(demo.loaded.module)
    plan = Plan({"": LayerSpec(sparsity=0.5), "head": LayerSpec(exclude=True)})
    result = apply_plan_pruning(model, demo.tree, plan.resolve(demo.tree), EXAMPLE,
                                global_unstructured=True)
    layers = result.report["unstructured"]["layers"]
    assert result.report["unstructured"]["mode"] == "global"
    total = sum(layer_weight(model, name).numel() for name in layers)
    zeros = sum(layer_weight(model, name).numel() - int(torch.count_nonzero(
        layer_weight(model, name))) for name in layers)
    assert zeros == round(0.5 * total)
    assert len({round(v["sparsity"], 2) for v in layers.values()}) > 2
    assert result.structured is None
    assert torch.count_nonzero(model.head[2].weight) == model.head[2].weight.numel()


def test_an_empty_plan_changes_nothing_and_taylor_needs_data(demo: Workspace) -> None:
    model = copy.deepcopy(demo.loaded.module)
    result = apply_plan_pruning(model, demo.tree, Plan().resolve(demo.tree), EXAMPLE)
    assert len(result.masks) == 0 and result.structured is None
    assert result.report["before"] == result.report["after"]
    with pytest.raises(ValueError, match="needs data"):
        apply_plan_pruning(model, demo.tree, _mixed_plan().resolve(demo.tree), EXAMPLE,
                           importance="taylor")


def test_taylor_with_data(demo: Workspace, task: TaskData) -> None:
    model = copy.deepcopy(demo.loaded.module)
    result = apply_plan_pruning(model, demo.tree, _mixed_plan().resolve(demo.tree), EXAMPLE,
                                data=task.calibration, importance="taylor")
    assert result.report["importance"] == "taylor"
    assert model.res.conv2.out_channels == 32
    assert all(p.grad is None for p in model.parameters())
