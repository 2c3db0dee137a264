"""Training with dropout off (output matching): an exact target with no dropout noise, while
batch norms still adapt their running statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from studio.core.jobs import CancelToken, Metric
from studio.core.methods.distill import OutputMatchingLoss
from studio.core.train.loop import TrainConfig, train


def _losses(dropout: bool) -> list[float]:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4))
    student = copy.deepcopy(teacher)  # the same weights: only dropout can make them differ
    data = TensorDataset(torch.randn(40, 8))
    events = train(student, data, TrainConfig(lr=0.0, batch_size=4), CancelToken(),
                   OutputMatchingLoss(teacher, "embedding"), "match", dropout=dropout)
    return [e.value for e in events if isinstance(e, Metric)]


def test_without_dropout_a_copy_of_the_teacher_matches_it_exactly() -> None:
    assert _losses(dropout=False) == pytest.approx([0.0], abs=1e-6)
    assert _losses(dropout=True)[0] > 0.05  # dropout noise alone


def test_batch_norms_still_learn_their_statistics_without_dropout() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    data = TensorDataset(torch.randn(32, 4) + 3.0)
    list(train(model, data, TrainConfig(lr=0.0, batch_size=8), CancelToken(),
               lambda m, x, _y: m(x).pow(2).mean(), dropout=False))
    assert model[1].running_mean.abs().sum() > 0  # updated in training mode
    assert not model.training  # and the model is left in eval mode



def test_qat_layers_keep_learning_their_activation_ranges_without_dropout() -> None:
    from studio.core.methods.quantization.qat import prepare_qat
    from studio.core.train.loop import train_without_dropout

    model = prepare_qat(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)), {"0": 8}, {"0": 8})
    train_without_dropout(model)
    assert model[0].training and not model[1].training
    model[0](torch.ones(2, 4))
    model[0](torch.full((2, 4), 100.0))
    assert float(model[0].act_max) > 10  # the second batch still moved the range
