"""oBERT (second-order unstructured pruning): the block inverse Fisher built gradient by
gradient is the inverse of the damped empirical Fisher, the update removes exactly the chosen
weights and lowers the loss against plain zeroing, and on the demo it keeps far more accuracy
than magnitude at the same sparsity, one-shot, through the plan."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from studio.core.data.task import TaskData
from studio.core.methods.pruning import apply_plan_pruning
from studio.core.methods.pruning.masks import MaskSet
from studio.core.methods.pruning.obert import BlockFisherInverse, block_fisher
from studio.core.methods.pruning.unstructured import layer_masks
from studio.core.plan.plan import Plan
from studio.core.plan.spec import LayerSpec
from studio.core.train.loop import evaluate
from studio.core.workspace import Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_woodbury_inverse_is_the_inverse_of_the_damped_empirical_fisher() -> None:
    torch.manual_seed(0)
    weight = torch.randn(2, 8)  # 16 weights: blocks of 8 are the two rows
    gradients = [torch.randn(2, 8) for _ in range(5)]
    inverse = BlockFisherInverse(weight, block=8, damp=0.3)
    inverse.add(gradients[:3], total=len(gradients))  # a rank-3 update, then a rank-2 one
    inverse.add(gradients[3:], total=len(gradients))
    for row in range(2):
        g = torch.stack([gradient[row] for gradient in gradients])
        fisher = 0.3 * torch.eye(8) + g.T @ g / len(gradients)
        assert torch.allclose(inverse.inverse[row], torch.linalg.inv(fisher), atol=1e-4)


def _trained_linear() -> tuple[nn.Module, TensorDataset]:
    torch.manual_seed(0)
    inputs = torch.randn(256, 16)
    inputs[:, 8:] = inputs[:, :8] + 0.1 * torch.randn(256, 8)  # correlated features
    labels = (inputs[:, :4].sum(1) > 0).long() + 2 * (inputs[:, 4:8].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(16, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    return model, TensorDataset(inputs, labels)


def _loss(model: nn.Module, data: TensorDataset) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(data.tensors[0]), data.tensors[1]))


def test_the_update_removes_exactly_the_masked_weights_and_beats_plain_zeroing() -> None:
    model, data = _trained_linear()
    fisher = block_fisher(model, ["0"], data, block=16, gradients=256)
    masks = layer_masks(fisher.scores, {"0": 0.5})
    zeroed = copy.deepcopy(model)
    masks.apply(zeroed)
    updated = copy.deepcopy(model)
    fisher.update(updated, masks)
    weight = updated[0].weight
    assert torch.equal(weight == 0, ~masks["0"])  # removed ones zero, kept ones moved
    assert not torch.equal(weight[masks["0"]], model[0].weight[masks["0"]])
    magnitude = copy.deepcopy(model)
    MaskSet({"0": layer_masks({"0": model[0].weight.abs()}, {"0": 0.5})["0"]}).apply(magnitude)
    assert _loss(updated, data) < _loss(zeroed, data)
    assert _loss(updated, data) < _loss(magnitude, data)


def test_obert_through_the_plan_keeps_more_accuracy_than_magnitude_on_the_demo(
        demo: Workspace, task: TaskData) -> None:
    layers = ["stem.0", "block1.0", "block2.0", "res.conv1.0", "res.conv2", "head.2"]
    plan = Plan({name: LayerSpec(sparsity=0.5) for name in layers})
    accuracy = {}
    for importance in ("magnitude", "obert"):
        model = copy.deepcopy(demo.loaded.module)
        result = apply_plan_pruning(model, demo.tree, plan.resolve(demo.tree),
                                    demo.example.make_tensor(), task.calibration, importance)
        for name in layers:
            assert result.report["unstructured"]["layers"][name]["sparsity"] == \
                pytest.approx(0.5, abs=0.01)
        accuracy[importance] = evaluate(model, task.test)
    assert result.report["obert"]["gradients"] == 256
    assert accuracy["obert"] > accuracy["magnitude"] + 0.1


def test_without_labels_obert_takes_the_outputs_fisher_and_still_beats_magnitude(
        demo: Workspace, task: TaskData) -> None:
    """No labels: the gradients are of the outputs in random directions (E[g gᵀ] = JᵀJ)."""
    layers = ["stem.0", "block1.0", "block2.0", "res.conv1.0", "res.conv2", "head.2"]
    plan = Plan({name: LayerSpec(sparsity=0.5) for name in layers})
    unlabelled = TensorDataset(task.calibration.tensors[0])
    accuracy = {}
    for importance in ("magnitude", "obert"):
        model = copy.deepcopy(demo.loaded.module)
        apply_plan_pruning(model, demo.tree, plan.resolve(demo.tree), demo.example.make_tensor(),
                           unlabelled, importance)
        accuracy[importance] = evaluate(model, task.test)
    assert accuracy["obert"] > accuracy["magnitude"] + 0.1
