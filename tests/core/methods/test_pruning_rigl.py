"""RigL-style sparse training on top of AGP: after the ramp the sparsity stays exactly at its
target while the mask moves (weights dropped where small, regrown where the gradient is
large), and the weights outside the final mask are zero."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from studio.core.jobs import CancelToken
from studio.core.methods.pruning.schedule import RigLPruner
from studio.core.train.loop import TrainConfig, train

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_the_sparsity_holds_while_the_mask_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    data = TensorDataset(torch.randn(256, 16), torch.randint(0, 4, (256,)))
    report: dict = {}
    masks_seen: dict[int, torch.Tensor] = {}
    pruner = RigLPruner(model, {"0": 0.8, "2": 0.5}, ramp_steps=8, regrow_until=24, every=2,
                        report=report)

    def after_step(step: int) -> None:
        pruner(step)
        if "0" in pruner.masks:  # from the first pruning step on
            masks_seen[step] = pruner.masks["0"].clone()

    list(train(model, data, TrainConfig(epochs=4, lr=1e-2, batch_size=32), CancelToken(),
               after_step=after_step))
    regrowing = [(step, sparsity) for step, sparsity in pruner.history if 8 < step <= 24]
    assert len(regrowing) == report["regrow_steps"] == 8
    for _step, sparsity in regrowing:
        assert sparsity == {"0": pytest.approx(0.8, abs=1 / 512),
                            "2": pytest.approx(0.5, abs=1 / 128)}
    assert int(masks_seen[8].sum()) == int(masks_seen[24].sum())  # as many weights ...
    changed = int((masks_seen[8] != masks_seen[24]).sum())
    assert changed > 0 and report["moved"] > 0  # ... but not the same ones
    assert torch.equal(masks_seen[24], masks_seen[32])  # the mask is fixed after regrow_until
    assert not bool(model[0].weight[~pruner.masks["0"]].any())
