"""Forward-hook feature capture: by name, through tuples, before in-place ops, and removable."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from studio.core.errors import StudioError
from studio.core.methods.distill import FeatureCapture
from studio.core.util import first_tensor


class TupleBlock(nn.Module):
    """Returns (hidden, attention-like extra), as transformer layers do."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.linear(x), x.sum(-1)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = TupleBlock()
        self.norm = nn.BatchNorm1d(4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.block(x)[0]))


def test_captures_first_tensor_of_tuple_outputs_and_value_before_inplace_ops():
    net = Net().eval()
    x = torch.randn(5, 4)
    with FeatureCapture(net, ["block", "norm"]) as capture:
        out = net(x)
        hidden = capture["block"]
        assert torch.allclose(hidden, net.block.linear(x))
        # ReLU(inplace) ran on the batch norm's output after the hook: the clone kept it.
        assert (capture["norm"] < 0).any()
        assert (out >= 0).all()
    assert not net.block._forward_hooks and not net.norm._forward_hooks


def test_close_removes_every_hook_and_is_idempotent():
    net = Net()
    capture = FeatureCapture(net, ["block", "norm", "block"])
    assert len(net.block._forward_hooks) == 1  # a name given twice is hooked once
    capture.close()
    capture.close()
    assert all(not m._forward_hooks for m in net.modules())


def test_unknown_layer_names_suggest_close_matches():
    with pytest.raises(StudioError, match=r"did you mean 'block\.linear'"):
        FeatureCapture(Net(), ["block.linaer"], role="student")
    with pytest.raises(StudioError, match="did not run"):
        FeatureCapture(Net(), ["act"])["act"]


def test_first_tensor_walks_tuples_lists_and_mappings():
    t = torch.ones(1)
    assert first_tensor(t) is t
    assert first_tensor((None, [t, torch.zeros(1)])) is t
    assert first_tensor({"logits": t, "hidden": torch.zeros(1)}) is t
    assert first_tensor((None, "x")) is None
