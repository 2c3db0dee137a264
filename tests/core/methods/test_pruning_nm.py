"""N:M semi-structured masks: exactly N nonzero weights in every M along the input dimension."""

from __future__ import annotations

import copy

import pytest
import torch

from studio.core.methods.pruning.masks import layer_weight
from studio.core.methods.pruning.nm import dense_tail, follows_nm, nm_mask, prune_nm
from studio.core.workspace import open_workspace

LAYERS = ["stem.0", "block1.0", "block2.0", "res.conv1.0", "res.conv2", "head.2"]


def test_two_four_on_the_demo_leaves_exactly_two_zeros_in_every_group() -> None:
    workspace = open_workspace("demo")
    model = copy.deepcopy(workspace.loaded.module)
    inputs = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    masks = prune_nm(model, dict.fromkeys(LAYERS, (2, 4)))
    for name in LAYERS:
        rows = layer_weight(model, name).detach().reshape(layer_weight(model, name).shape[0], -1)
        full = rows.shape[1] - rows.shape[1] % 4
        zeros_per_group = (rows[:, :full].reshape(rows.shape[0], -1, 4) == 0).sum(-1)
        assert bool((zeros_per_group == 2).all()), name
        assert follows_nm(layer_weight(model, name), 2, 4)
        assert torch.count_nonzero(rows[:, full:]) == rows[:, full:].numel()  # tail dense
    # The stem's filters have 1*3*3 = 9 inputs: two full groups and one weight left dense.
    assert dense_tail(layer_weight(model, "stem.0").shape, 4) == 32
    assert masks.sparsity()["block1.0"] == pytest.approx(0.5)
    with torch.no_grad():
        logits = model.eval()(inputs)
    assert logits.shape == (4, 10) and bool(torch.isfinite(logits).all())
    assert not follows_nm(workspace.loaded.module.block1[0].weight, 2, 4)  # the check can fail


def test_the_largest_weights_of_each_group_stay() -> None:
    weight = torch.tensor([[1.0, -4.0, 3.0, 2.0, 0.5, 0.1, -0.2, 9.0]])
    expected = torch.tensor([[False, True, True, False, True, False, False, True]])
    assert torch.equal(nm_mask(weight.abs(), 2, 4), expected)


@pytest.mark.parametrize(("n", "m", "sparsity"), [(1, 4, 0.75), (4, 8, 0.5), (2, 8, 0.75)])
def test_other_patterns(n: int, m: int, sparsity: float) -> None:
    weight = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(n * m))
    mask = nm_mask(weight.abs(), n, m)
    assert follows_nm(weight * mask, n, m)
    assert 1.0 - float(mask.float().mean()) == pytest.approx(sparsity)
    with pytest.raises(ValueError, match="0 < N < M"):
        nm_mask(weight, m, n)
