"""``data.validation_samples``: trials are scored on samples carved from the training split,
kept out of fine-tuning and calibration; the test split is not used."""

from __future__ import annotations

import pytest
import torch

from studio.core.data.sources import load_task
from studio.core.errors import StudioError
from studio.core.plan.stages import DataSection


def test_the_validation_split_comes_from_training_and_leaves_it() -> None:
    plain = load_task(DataSection(calibration_samples=300))
    task = load_task(DataSection(calibration_samples=300, validation_samples=400))
    indices = task.splits.indices
    assert len(task.test) == 400 and indices["test"] == []
    assert indices["validation"] == plain.splits.indices["fine_tune"][-400:]
    assert not set(indices["validation"]) & set(indices["fine_tune"])
    assert not set(indices["validation"]) & set(indices["calibration"])
    assert len(task.train) == len(plain.train) - 400
    assert torch.equal(task.test.tensors[0], plain.train.tensors[0][-400:])
    assert len(task.calibration) == len(indices["calibration"]) < 300
    assert "validation samples carved from training" in task.summary()["name"]


def test_a_validation_split_as_large_as_training_is_refused() -> None:
    with pytest.raises(StudioError, match="validation_samples 4000 must leave samples"):
        load_task(DataSection(validation_samples=4000))
