"""Unstructured pruning: exact per-layer fractions, one global threshold, masks that survive
optimizer steps, and Taylor importance that ranks weights differently from magnitude."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from studio.core.data.task import TaskData
from studio.core.jobs import CancelToken
from studio.core.methods.pruning.importance import magnitude_scores, taylor_scores
from studio.core.methods.pruning.masks import MaskSet, layer_weight
from studio.core.methods.pruning.unstructured import global_masks, prune_unstructured
from studio.core.train.loop import TrainConfig, train
from studio.core.workspace import Workspace

CONVS = ["stem.0", "block1.0", "block2.0", "res.conv1.0", "res.conv2"]




def _zeros(model: torch.nn.Module, name: str) -> int:
    weight = layer_weight(model, name)
    return weight.numel() - int(torch.count_nonzero(weight))


def test_per_layer_sparsity_is_exact_and_removes_the_smallest(demo: Workspace) -> None:
    model = copy.deepcopy(demo.loaded.module)
    original = {name: layer_weight(model, name).detach().clone() for name in CONVS}
    asked = {"stem.0": 0.3, "block1.0": 0.5, "block2.0": 0.8, "res.conv1.0": 0.25,
             "res.conv2": 0.9, "head.2": 0.1}
    masks = prune_unstructured(model, asked)
    for name, fraction in asked.items():
        numel = layer_weight(model, name).numel()
        assert _zeros(model, name) == round(numel * fraction), name
        assert masks.sparsity()[name] == pytest.approx(round(numel * fraction) / numel)
    for name in CONVS:  # magnitude: every removed weight is no larger than every kept one
        magnitude, kept = original[name].abs(), masks[name]
        assert magnitude[~kept].max() <= magnitude[kept].min()


def test_global_threshold_meets_the_overall_fraction_with_one_threshold(
        demo: Workspace) -> None:
    model = copy.deepcopy(demo.loaded.module)
    original = {name: layer_weight(model, name).detach().abs().clone() for name in CONVS}
    masks = prune_unstructured(model, dict.fromkeys(CONVS, 0.6), global_threshold=True)
    total = sum(w.numel() for w in original.values())
    assert sum(_zeros(model, name) for name in CONVS) == round(0.6 * total)
    per_layer = masks.sparsity()
    assert max(per_layer.values()) - min(per_layer.values()) > 0.1  # not uniform
    removed = torch.cat([original[n][~masks[n]] for n in CONVS])
    kept = torch.cat([original[n][masks[n]] for n in CONVS])
    assert removed.max() <= kept.min()  # one threshold across all layers


def test_global_threshold_respects_layer_caps() -> None:
    scores = {"small": torch.full((100,), 0.01), "large": torch.arange(1.0, 101.0)}
    masks = global_masks(scores, 0.5, caps={"small": 0.8, "large": 0.99})
    # The small layer would lose everything under one threshold; its cap stops it at 80%.
    assert int((~masks["small"]).sum()) == 80
    assert int((~masks["large"]).sum()) == 20
    assert torch.equal(~masks["large"], torch.arange(100) < 20)  # the 20 smallest there


def test_masks_keep_zeros_through_real_optimizer_steps(demo: Workspace, task: TaskData) -> None:
    model = copy.deepcopy(demo.loaded.module)
    masks = prune_unstructured(model, {"block1.0": 0.5, "res.conv2": 0.7})
    inputs, labels = task.train.tensors[0][:64], task.train.tensors[1][:64]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    model.train()
    torch.nn.functional.cross_entropy(model(inputs), labels).backward()
    optimizer.step()
    # Without the masks, one step moves the pruned weights off zero...
    assert _zeros(model, "block1.0") < round(0.5 * layer_weight(model, "block1.0").numel())
    masks.apply(model)
    # ...re-applied, they are exactly as pruned again.
    assert _zeros(model, "block1.0") == round(0.5 * layer_weight(model, "block1.0").numel())
    subset = TensorDataset(*(t[:192] for t in task.train.tensors))
    for _ in train(model, subset, TrainConfig(epochs=1, lr=1e-2), CancelToken(),
                   after_step=masks.hook(model)):
        pass
    for name, mask in masks.masks.items():
        weight = layer_weight(model, name)
        assert torch.count_nonzero(weight[~mask]) == 0
        assert torch.count_nonzero(weight[mask]) == int(mask.sum())


def test_taylor_importance_ranks_weights_differently(demo: Workspace, task: TaskData) -> None:
    model = copy.deepcopy(demo.loaded.module)
    taylor = taylor_scores(model, ["block1.0"], task.calibration, n_batches=2)["block1.0"]
    magnitude = magnitude_scores(model, ["block1.0"])["block1.0"]
    assert taylor.shape == magnitude.shape and bool((taylor > 0).any())
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind
    by_taylor = MaskSet({"block1.0": taylor > taylor.median()})
    by_magnitude = MaskSet({"block1.0": magnitude > magnitude.median()})
    overlap = float((by_taylor["block1.0"] == by_magnitude["block1.0"]).float().mean())
    assert 0.5 < overlap < 0.95  # related rankings, but not the same weights
    pruned = copy.deepcopy(demo.loaded.module)
    masks = prune_unstructured(pruned, {"block1.0": 0.5}, importance="taylor",
                               data=task.calibration)
    assert masks.sparsity()["block1.0"] == pytest.approx(0.5)


def test_taylor_without_data_and_stale_masks_are_refused(demo: Workspace) -> None:
    model = copy.deepcopy(demo.loaded.module)
    with pytest.raises(ValueError, match="needs data"):
        prune_unstructured(model, {"block1.0": 0.5}, importance="taylor")
    with pytest.raises(ValueError, match="shape"):
        MaskSet({"block1.0": torch.ones(3, 3, dtype=torch.bool)}).apply(model)
    with pytest.raises(ValueError, match="no prunable weight"):
        MaskSet({"pool1": torch.ones(1, dtype=torch.bool)}).apply(model)
