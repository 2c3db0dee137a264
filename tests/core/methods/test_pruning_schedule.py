"""Gradual (AGP, cubic) pruning: the schedule's values, and pruning inside the training loop."""

from __future__ import annotations

import copy
from itertools import pairwise

import pytest
import torch
from torch.utils.data import TensorDataset

from studio.core.data.task import demo_task
from studio.core.jobs import CancelToken
from studio.core.methods.pruning.masks import layer_weight
from studio.core.methods.pruning.schedule import (
    GradualPruner,
    cubic_schedule,
    cubic_sparsity,
    layer_schedule,
)
from studio.core.train.loop import TrainConfig, train
from studio.core.workspace import open_workspace


def test_cubic_schedule_starts_at_initial_ends_at_final_and_rises() -> None:
    values = cubic_schedule(10, final=0.8, initial=0.1)
    assert len(values) == 11
    assert values[0] == pytest.approx(0.1) and values[-1] == pytest.approx(0.8)
    assert all(b > a for a, b in pairwise(values))
    assert values[5] == pytest.approx(0.8 + (0.1 - 0.8) * 0.5 ** 3)
    steps = [b - a for a, b in pairwise(values)]
    assert all(b < a for a, b in pairwise(steps))  # fast first, slow last
    assert cubic_sparsity(25, 10, 0.8) == pytest.approx(0.8)  # holds after the ramp
    assert cubic_sparsity(-3, 10, 0.8, 0.1) == pytest.approx(0.1)


def test_layer_schedule_gives_each_layer_its_own_curve() -> None:
    steps = layer_schedule({"a": 0.5, "b": 0.9}, 4)
    assert len(steps) == 5 and steps[0] == {"a": 0.0, "b": 0.0}
    assert steps[-1] == pytest.approx({"a": 0.5, "b": 0.9})
    assert all(steps[t]["b"] >= steps[t]["a"] for t in range(5))


def test_gradual_pruning_during_fine_tuning_reaches_the_targets() -> None:
    model = copy.deepcopy(open_workspace("demo").loaded.module)
    task = demo_task()
    subset = TensorDataset(*(t[:640] for t in task.train.tensors))  # 10 steps of 64
    targets = {"block1.0": 0.6, "res.conv2": 0.4}
    pruner = GradualPruner(model, targets, ramp_steps=8, every=2, start=1)
    for _ in train(model, subset, TrainConfig(epochs=1, lr=1e-3), CancelToken(),
                   after_step=pruner):
        pass
    steps = [step for step, _ in pruner.history]
    assert steps == [1, 3, 5, 7, 9]
    for name, final in targets.items():
        reached = [achieved[name] for _, achieved in pruner.history]
        assert all(b > a for a, b in pairwise(reached))
        weight = layer_weight(model, name)
        assert 1 - int(torch.count_nonzero(weight)) / weight.numel() == pytest.approx(
            final, abs=1 / weight.numel())
        assert torch.count_nonzero(weight[~pruner.masks[name]]) == 0
