"""Structured channel pruning on the demo CNN: coupled layers cut together, tensors really shrink,
the classifier keeps its classes, ONNX export still matches, and fine-tuning recovers accuracy."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.utils.data import TensorDataset

from studio.core.data.task import TaskData
from studio.core.graph.torch_tree import build_torch_tree
from studio.core.jobs import CancelToken
from studio.core.methods.pruning.structured import (
    StructuredReport,
    channel_groups,
    dependency_groups,
    prune_channels,
)
from studio.core.models.inputs import InputSpec
from studio.core.train.loop import TrainConfig, evaluate, train
from studio.core.workspace import Workspace

EXAMPLE = torch.zeros(1, 1, 28, 28)




@pytest.fixture(scope="module")
def pruned(demo: Workspace) -> tuple[torch.nn.Module, StructuredReport]:
    """The demo with 50% of the channels of every prunable layer asked for."""
    model = copy.deepcopy(demo.loaded.module)
    ratios = {node.name: 0.5 for node in demo.tree.nodes if node.prunable}
    return model, prune_channels(model, EXAMPLE, ratios)


def test_the_pruned_model_runs_and_is_really_smaller(
        demo: Workspace, pruned: tuple[torch.nn.Module, StructuredReport]) -> None:
    model, report = pruned
    inputs = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert model(inputs).shape == (3, 10)
    tree = build_torch_tree(model, InputSpec((1, 1, 28, 28)), "pruned")
    assert report.before.params == demo.tree.root.total_params
    assert report.before.macs == demo.tree.root.total_macs
    assert report.after.params == tree.root.total_params == sum(
        p.numel() for p in model.parameters())
    assert report.after.macs == tree.root.total_macs
    assert 0.2 < report.macs_ratio < 0.35  # half the channels in and out: about a quarter
    assert 0.2 < report.params_ratio < 0.35
    assert model.stem[0].weight.shape == (16, 1, 3, 3)
    assert model.res.conv1[0].weight.shape == (32, 32, 3, 3)


def test_the_residual_coupling_is_cut_together(
        pruned: tuple[torch.nn.Module, StructuredReport]) -> None:
    model, report = pruned
    width = model.res.conv2.out_channels
    assert width == model.block2[0].out_channels == model.res.bn2.num_features == 32
    assert model.block2[1].num_features == model.res.conv1[0].in_channels == width
    coupled = [g for g in report.groups if "res.conv2" in g["layers"]]
    assert len(coupled) == 1 and set(coupled[0]["layers"]) == {"res.conv2", "block2.0"}
    assert {"res.bn2", "block2.1", "res.conv1.0", "head.2"} <= set(coupled[0]["followers"])
    assert len(coupled[0]["removed_channels"]) == 32
    assert report.channels["block2.0"] == [64, 32]


def test_the_classifier_keeps_every_class(
        pruned: tuple[torch.nn.Module, StructuredReport]) -> None:
    model, report = pruned
    assert model.head[2].out_features == 10 and model.head[2].in_features == 32
    assert report.skipped == [{"layers": ["head.2"], "reason":
                               "feeds the model output: its channels are the model's outputs"}]


def test_the_pruned_model_exports_to_onnx_and_matches(
        pruned: tuple[torch.nn.Module, StructuredReport], tmp_path: Path) -> None:
    model, _ = pruned
    inputs = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    path = tmp_path / "pruned.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (inputs,), str(path), dynamo=False,
                          input_names=["input"], output_names=["logits"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"input": inputs.numpy()})
    with torch.no_grad():
        torch_logits = model(inputs).numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)


def test_fine_tuning_recovers_the_accuracy(
        pruned: tuple[torch.nn.Module, StructuredReport], task: TaskData) -> None:
    model = copy.deepcopy(pruned[0])
    before = evaluate(model, task.test)
    images, labels = task.train.tensors
    subset = TensorDataset(images[:1500], labels[:1500])  # enough to recover, fast on 2 cores
    for _ in train(model, subset, TrainConfig(epochs=1, lr=2e-3), CancelToken()):
        pass
    after = evaluate(model, task.test)
    assert after > 0.85 and after > before + 0.3


def test_dependency_groups_list_the_coupled_layers(demo: Workspace) -> None:
    model = demo.loaded.module
    groups = dependency_groups(model, EXAMPLE)
    assert set(groups) == {n.name for n in demo.tree.nodes if n.prunable}
    assert set(groups["res.conv2"]) == set(groups["block2.0"]) == {"res.conv2", "block2.0"}
    assert groups["stem.0"] == ["stem.0"] and groups["head.2"] == ["head.2"]
    by_layer = {info.layers[0]: info for info in channel_groups(model, EXAMPLE)}
    assert by_layer["head.2"].feeds_output and not by_layer["stem.0"].feeds_output
    assert model.training is False  # tracing left the mode as it was


def test_a_coupled_layer_left_out_of_the_plan_keeps_the_group_whole(demo: Workspace) -> None:
    model = copy.deepcopy(demo.loaded.module)
    report = prune_channels(model, EXAMPLE, {"res.conv2": 0.5, "block1.0": 0.25})
    assert model.res.conv2.out_channels == model.block2[0].out_channels == 64
    assert model.block1[0].out_channels == 24 and model.block2[0].in_channels == 24
    (skip,) = report.skipped
    assert skip["layers"] == ["res.conv2", "block2.0"] and "block2.0" in skip["reason"]


def test_excluded_layers_are_protected(demo: Workspace) -> None:
    model = copy.deepcopy(demo.loaded.module)
    report = prune_channels(model, EXAMPLE, {"stem.0": 0.5, "block1.0": 0.5},
                            protect=["block1.0"])
    assert model.block1[0].out_channels == 32 and model.stem[0].out_channels == 16
    assert model.block1[0].in_channels == 16  # its inputs follow the layer feeding it
    assert "excluded" in report.skipped[0]["reason"]


def test_taylor_importance_removes_other_channels_than_magnitude(
        demo: Workspace, task: TaskData) -> None:
    removed = {}
    for kind in ("magnitude", "l1", "taylor"):
        model = copy.deepcopy(demo.loaded.module)
        report = prune_channels(model, EXAMPLE, {"res.conv1.0": 0.5}, importance=kind,
                                data=task.calibration)
        removed[kind] = set(report.groups[0]["removed_channels"])
        assert model.res.conv1[0].out_channels == 32
        assert all(p.grad is None for p in model.parameters())
    assert removed["taylor"] != removed["magnitude"]
    with pytest.raises(ValueError, match="needs data"):
        prune_channels(copy.deepcopy(demo.loaded.module), EXAMPLE, {"stem.0": 0.5},
                       importance="taylor")
    with pytest.raises(ValueError, match="no layer named"):
        prune_channels(copy.deepcopy(demo.loaded.module), EXAMPLE, {"stem.9": 0.5})
