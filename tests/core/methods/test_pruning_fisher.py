"""Second-order (Fisher) mask search for heads and FFN units: the estimated cost of removing a
set of units predicts the distortion it really causes, rearrangement avoids removing two units
that do the same work (which the diagonal search cannot see). The tiny BERT through the plan is
in tests/core/transformers/test_hf_fisher.py."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from studio.core.methods.pruning.fisher import (
    MaskSite,
    choose_removed,
    ffn_site,
    mask_fisher,
    removal_cost,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 10), nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), _Block())


def test_the_estimated_cost_predicts_the_measured_distortion():
    model = _model()
    site = ffn_site(model, "1.fc1")
    assert site == MaskSite("1.fc2", 1, 10)
    inputs = torch.randn(1024, 7, 5)  # 7 tokens per sample
    fisher = mask_fisher(model, {"ffn": site}, inputs)["ffn"]
    removed = [1, 4, 7]
    with torch.no_grad():
        before = model(inputs)
        cut = copy.deepcopy(model)
        cut[1].fc2.weight[:, removed] = 0.0
        measured = 0.5 * ((cut(inputs) - before) ** 2).sum(dim=(1, 2)).mean()
    # The output is linear in the masks here, so only the random directions add error.
    assert removal_cost(fisher, removed) == pytest.approx(float(measured), rel=0.15)


def test_rearrangement_keeps_one_of_two_units_doing_the_same_work():
    fisher = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.5]],
                          dtype=torch.float64)
    choice = choose_removed(fisher, 2)
    assert choice.search_cost == 2.0  # the diagonal picks both twins: ½(1 + 1 + 2·1)
    assert choice.removed in ([0, 2], [1, 2]) and choice.rearranged_cost == 1.25
