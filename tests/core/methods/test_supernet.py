"""A once-for-all supernet over a tiny residual CNN: the largest subnet is the original model,
a masked subnet computes what its extracted plain model computes, the smallest has the right
shapes, subnets export to ONNX that matches torch, and training follows progressive
shrinking and stops on cancel."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from studio.core.errors import StudioError
from studio.core.export.measure import run_onnx
from studio.core.export.onnx_export import export_onnx
from studio.core.jobs import CancelToken, JobCancelled, Log, Progress
from studio.core.jobs.events import drain
from studio.core.methods.elastic.supernet import Subnet, Supernet, load_supernet
from studio.core.methods.elastic.training import (
    SupernetConfig,
    shrinking_stages,
    stage_at,
    train_supernet,
)
from studio.core.train.batch_norm import reestimate_batch_norms
from studio.core.train.loop import TrainConfig, train

WIDTHS = (0.25, 0.5, 1.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(channels), nn.ReLU())
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.bn2(self.conv2(self.conv1(x))))


class Plain(nn.Module):
    """Keeps its input's shape but adds nothing back: not skippable."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv(x))


class TinyRes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.block = Residual(8)
        self.plain = Plain(8)
        self.mid = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 6),
                                  nn.ReLU(), nn.Linear(6, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.mid(self.plain(self.block(self.stem(x)))))


def _tiny(seed: int = 0) -> TinyRes:
    torch.manual_seed(seed)
    model = TinyRes()
    with torch.no_grad():  # statistics and shifts a trained model would have
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.bias.uniform_(-0.5, 0.5)
    return model.eval()


def _inputs(count: int = 6) -> Tensor:
    return torch.randn(count, 1, 10, 10, generator=torch.Generator().manual_seed(2))


def test_groups_and_blocks_are_found() -> None:
    supernet = Supernet.build(_tiny(), _inputs(1))
    assert {g.key for g in supernet.groups} == {"block.conv2", "block.conv1.0", "plain.conv",
                                                "mid.0", "head.2"}  # the add couples stem.0
    assert "head.4" not in {g.key for g in supernet.groups}  # the classifier keeps its classes
    assert supernet.blocks == ["block"]


def test_the_largest_subnet_is_the_original_model() -> None:
    model, inputs = _tiny(), _inputs()
    with torch.no_grad():
        expected = model(inputs)
        supernet = Supernet.build(model, inputs[:1])
        with supernet.active(supernet.largest()) as active:
            assert torch.equal(active(inputs), expected)
        assert torch.equal(supernet.extract(supernet.largest())(inputs), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_masked_subnet_computes_what_its_extracted_model_computes(seed: int) -> None:
    model, inputs = _tiny(), _inputs()
    supernet = Supernet.build(model, inputs[:1])
    subnet = supernet.sample(random.Random(seed), WIDTHS, skip=True)
    with torch.no_grad():
        with supernet.active(subnet) as active:
            masked = active(inputs)
        plain = supernet.extract(subnet)(inputs)
    assert torch.allclose(masked, plain, atol=1e-5)
    assert not torch.allclose(plain, model(inputs), atol=1e-3)


def test_the_smallest_subnet_has_the_right_shapes() -> None:
    supernet = Supernet.build(_tiny(), _inputs(1))
    small = supernet.extract(supernet.smallest(WIDTHS, skip=True))
    assert isinstance(small.block, nn.Identity)
    assert small.stem[0].out_channels == 2  # 8 channels at 0.25
    assert small.plain.conv.in_channels == 2 and small.plain.conv.out_channels == 2
    assert small.mid[0].out_channels == 3  # 12 at 0.25
    assert small.head[2].in_features == 3 and small.head[2].out_features == 2  # 6 - int(4.5)
    assert small.head[4].out_features == 3
    assert small(_inputs()).shape == (6, 3)


def test_the_most_important_channels_are_kept_first() -> None:
    model = _tiny()
    with torch.no_grad():
        for conv in (model.stem[0], model.block.conv2):
            conv.weight.mul_(0.01)
            conv.weight[5].fill_(1.0)  # by far the largest L1 norm of the coupled group
    supernet = Supernet.build(model, _inputs(1))
    assert supernet.keep_mask("block.conv2", 0.125).tolist() == [0, 0, 0, 0, 0, 1, 0, 0]


@pytest.mark.parametrize("skip", [False, True])
def test_subnets_export_to_onnx_that_matches_torch(tmp_path: Path, skip: bool) -> None:
    supernet = Supernet.build(_tiny(), _inputs(1))
    subnet = Subnet({g.key: 0.5 for g in supernet.groups}, ("block",) if skip else ())
    model = supernet.extract(subnet)
    path = export_onnx(model, _inputs(1), tmp_path / "subnet.onnx", external_data=False)
    inputs = _inputs(5)
    with torch.no_grad():
        expected = model(inputs).numpy()
    assert np.abs(run_onnx(path, inputs) - expected).max() < 1e-5
    graph = onnx.load(path).graph
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    assert weights["plain.conv.weight"] == (4, 4, 3, 3)  # 8 channels in and out at 0.5
    assert [node.op_type for node in graph.node].count("Conv") == (3 if skip else 5)


def test_a_saved_supernet_loads_onto_its_architecture_only() -> None:
    supernet = Supernet.build(_tiny(seed=0), _inputs(1))
    state = supernet.state()
    again = load_supernet(_tiny(seed=5), _inputs(1), state)
    subnet = supernet.smallest(WIDTHS, skip=False)
    with torch.no_grad():
        assert torch.equal(again.extract(subnet)(_inputs()),
                           supernet.extract(subnet)(_inputs()))
    with pytest.raises(StudioError, match="does not fit this model"):
        load_supernet(nn.Sequential(nn.Conv2d(1, 4, 3)), _inputs(1), state)


def test_shrinking_goes_depth_first_then_one_width_more_per_stage_the_last_longest() -> None:
    stages = shrinking_stages((0.25, 0.5, 1.0), True)
    assert [(s.widths, s.skip) for s in stages] == [((1.0,), True), ((1.0, 0.5), True),
                                                    ((1.0, 0.5, 0.25), True)]
    assert [stage_at(step, 8, 3) for step in range(8)] == [0, 0, 1, 1, 2, 2, 2, 2]
    assert stage_at(0, 1, 3) == 2  # a single step trains the last stage


def _quadrants(count: int) -> TensorDataset:
    """Which third of the image is bright: a task a tiny CNN learns in a few steps."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (count,), generator=generator)
    images = torch.rand(count, 1, 10, 10, generator=generator) * 0.2
    for index, label in enumerate(labels.tolist()):
        images[index, 0, :, 3 * label:3 * label + 3] += 1.0
    return TensorDataset(images, labels)


def _loss(supernet: Supernet, subnet: Subnet, data: TensorDataset) -> float:
    model = supernet.extract(subnet)
    reestimate_batch_norms(model, data, 32)  # as the search does before scoring a subnet
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(data.tensors[0]), data.tensors[1]))


def test_training_teaches_the_smallest_subnet_and_stops_on_cancel() -> None:
    data = _quadrants(96)
    model = _tiny()  # the user's trained model
    drain(train(model, data, TrainConfig(epochs=6, lr=0.02, batch_size=16), CancelToken()))
    supernet = Supernet.build(model, _inputs(1))
    smallest = supernet.smallest((0.5, 1.0), skip=True)
    before = _loss(supernet, smallest, data)  # cut from the plain model
    config = SupernetConfig(epochs=4, lr=0.01, batch_size=16, widths=(0.5, 1.0))
    events = list(train_supernet(supernet, data, config, CancelToken()))
    stages = [e.message for e in events if isinstance(e, Log)]
    assert len(stages) == 2 and "blocks skippable" in stages[0] and "0.5" in stages[1]
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].done == progress[-1].total == 24  # 4 epochs of 6 batches
    assert _loss(supernet, smallest, data) < 0.9 * before

    token = CancelToken()
    with pytest.raises(JobCancelled):
        for event in train_supernet(Supernet.build(_tiny(), _inputs(1)), data, config, token):
            if isinstance(event, Progress) and event.done == 2:
                token.cancel()


def test_a_bert_supernet_drops_whole_heads_and_ffn_units(tmp_path: Path) -> None:
    """Query/key/value channels of a BERT-like attention go a head at a time (the model splits
    them into heads of a fixed size); the masked subnet computes what the cut model does, and
    the cut model has fewer heads and FFN units and exports to matching ONNX."""
    pytest.importorskip("transformers")
    from studio.core.models.loader import open_model

    from ..transformers.conftest import save_tiny_bert

    model = open_model(save_tiny_bert(tmp_path / "bert")).module
    example = torch.randint(1, 100, (2, 12))
    supernet = Supernet.build(model, example)
    attention = [g for g in supernet.groups if g.attention is not None]
    ffn = [g for g in supernet.groups if g.key.endswith("intermediate.dense")]
    assert [(g.attention, g.unit, g.units) for g in attention] == [
        (f"model.encoder.layer.{i}.attention", 8, 4) for i in range(2)]
    assert [g.channels for g in ffn] == [64, 64]
    mask = supernet.keep_mask(attention[0].key, 0.5)
    assert mask.reshape(4, 8).sum(1).tolist().count(8.0) == 2  # two whole heads stay
    assert set(mask.reshape(4, 8).sum(1).tolist()) == {0.0, 8.0}

    subnet = Subnet({attention[0].key: 0.25, attention[1].key: 0.5, ffn[0].key: 0.5})
    with torch.no_grad():
        with supernet.active(subnet) as net:
            masked = net(example)
        small = supernet.extract(subnet)
        assert not torch.allclose(masked, model(example), atol=1e-4)
        assert torch.allclose(small(example), masked, atol=1e-5)
    layers = small.model.encoder.layer
    assert [layer.attention.self.num_attention_heads for layer in layers] == [1, 2]
    assert layers[0].intermediate.dense.out_features == 32
    path = export_onnx(small, example, tmp_path / "small.onnx")
    assert np.abs(run_onnx(path, example) - masked.numpy()).max() < 1e-4
