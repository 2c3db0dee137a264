"""Metrics against values worked out by hand, and the loss that recovers without labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from studio.core.data.metrics import (
    MetricTotals,
    accuracy,
    agreement,
    agreement_by_output,
    cosine,
    drop,
    mse,
    top1_agreement,
)
from studio.core.errors import StudioError
from studio.core.methods.distill import OutputMatchingLoss, output_matching_loss
from studio.core.train.loop import evaluate

REFERENCE = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
OUTPUTS = np.array([[1.0, 1.0], [0.0, -2.0], [6.0, 8.0]])


def test_agreement_by_hand() -> None:
    # cosines per sample: 1/sqrt(2), -1, 1
    assert cosine(REFERENCE, OUTPUTS) == pytest.approx((1 / math.sqrt(2) - 1 + 1) / 3)
    # arg-max: ref (0, 1, 1), out (0 [tie -> first], 0, 1)
    assert top1_agreement(REFERENCE, OUTPUTS) == pytest.approx(2 / 3)
    # squared differences: 0+1, 0+16, 9+16 over 6 elements
    assert mse(REFERENCE, OUTPUTS) == pytest.approx(42 / 6)
    assert agreement(REFERENCE, torch.tensor(REFERENCE)) == {
        "cosine": pytest.approx(1.0), "top1_agreement": 1.0, "mse": 0.0}
    assert agreement(np.ones((4, 1)), np.ones((4, 1)))["top1_agreement"] is None


def test_top1_agreement_only_for_one_output_of_class_scores() -> None:
    """An arg-max over box coordinates (N x K x 4) or over a multi-output model's 2-D tensors
    (scores per anchor as often as per class) means nothing: cosine and MSE only."""
    generator = np.random.default_rng(0)
    boxes = generator.normal(size=(6, 5, 4))
    assert agreement(boxes, boxes + 0.01)["top1_agreement"] is None
    assert agreement(REFERENCE, REFERENCE, outputs_in_model=2)["top1_agreement"] is None
    scores = generator.normal(size=(6, 5))
    by_output = agreement_by_output({"boxes": boxes, "scores": scores},
                                    {"boxes": boxes * 2, "scores": -scores})
    assert by_output == {
        "boxes": {"cosine": pytest.approx(1.0), "top1_agreement": None,
                  "mse": pytest.approx(float((boxes ** 2).mean()))},
        "scores": {"cosine": pytest.approx(-1.0), "top1_agreement": None,
                   "mse": pytest.approx(float((4 * scores ** 2).mean()))}}


def test_accuracy_and_batches_add_up() -> None:
    assert accuracy(OUTPUTS, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    totals = MetricTotals("cosine")
    totals.add(OUTPUTS[:1], REFERENCE[:1])
    totals.add(OUTPUTS[1:], REFERENCE[1:])
    assert totals.value() == pytest.approx(cosine(REFERENCE, OUTPUTS))
    assert drop("mse", 0.0, 0.5) == 0.5 and drop("cosine", 1.0, 0.9) == pytest.approx(0.1)
    with pytest.raises(StudioError, match="cannot be compared"):
        cosine(REFERENCE, OUTPUTS[:2])
    with pytest.raises(StudioError, match="no scores per class"):
        top1_agreement(np.ones((3, 1)), np.ones((3, 1)))


def test_evaluate_unlabelled_against_reference_outputs() -> None:
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    inputs = torch.tensor(OUTPUTS, dtype=torch.float32)
    data = TensorDataset(inputs)
    reference = torch.tensor(REFERENCE, dtype=torch.float32)
    assert evaluate(model, data, metric="mse", reference=reference, batch_size=2) == \
        pytest.approx(42 / 6)
    with pytest.raises(StudioError, match="accuracy needs labels"):
        evaluate(model, data)


def test_output_matching_is_zero_for_the_teacher_and_trains_a_student() -> None:
    torch.manual_seed(0)
    teacher = nn.Linear(4, 3)
    inputs = torch.randn(64, 4)
    for kind in ("logits", "embedding"):
        with torch.no_grad():
            same = output_matching_loss(teacher(inputs), teacher(inputs), kind)
        assert float(same) == pytest.approx(0.0, abs=1e-6)
        student = nn.Linear(4, 3)
        loss = OutputMatchingLoss(teacher, kind)
        optimizer = torch.optim.Adam(student.parameters(), lr=0.05)
        before = loss(student, inputs).item()
        for _ in range(100):
            optimizer.zero_grad()
            loss(student, inputs).backward()
            optimizer.step()
        assert loss(student, inputs).item() < 0.05 * before
        assert not any(p.requires_grad for p in teacher.parameters())  # the teacher is frozen
