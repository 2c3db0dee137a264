"""Splits are seeded, disjoint, explicit: the test split never feeds calibration or training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from studio.core.data.sources import load_task
from studio.core.errors import StudioError
from studio.core.plan.stages import DataSection


@pytest.fixture
def numbered(tmp_path: Path) -> Path:
    """100 samples whose one feature is their row number, labelled by parity."""
    np.savez(tmp_path / "n.npz", x=np.arange(100, dtype=np.float32)[:, None],
             y=np.arange(100) % 2)
    return tmp_path


def _rows(dataset) -> list[int]:
    return [int(v) for v in dataset.tensors[0][:, 0]]


def test_splits_are_seeded_disjoint_and_recorded(numbered: Path) -> None:
    section = DataSection(source="arrays", path="n.npz", test_fraction=0.2,
                          calibration_samples=30, train_samples=50, split_seed=3)
    first, again = load_task(section, numbered), load_task(section, numbered)
    assert first.splits.indices == again.splits.indices
    indices = first.splits.indices
    assert _rows(first.test) == indices["test"] and _rows(first.train) == indices["fine_tune"]
    assert _rows(first.calibration) == indices["calibration"]
    assert len(indices["test"]) == 20 and len(indices["train"]) == 80
    assert set(indices["test"]).isdisjoint(indices["train"])
    assert set(indices["test"]) | set(indices["train"]) == set(range(100))
    assert set(indices["calibration"]) <= set(indices["train"])
    assert indices["fine_tune"] == indices["train"][:50]
    assert len(set(indices["calibration"])) == 30
    other = load_task(section.model_copy(update={"split_seed": 4}), numbered)
    assert other.splits.indices["test"] != indices["test"]
    saved = first.splits.to_json()
    assert saved["sizes"] == {"train": 80, "fine_tune": 50, "calibration": 30, "test": 20}
    assert saved["seed"] == 3 and saved["path"] == "n.npz"
    assert first.summary() == {"name": "arrays: n.npz", "source": "arrays", "labelled": True,
                               "metric": "accuracy", "num_classes": 2,
                               "sizes": saved["sizes"]}


def test_a_separate_test_file_is_the_test_split(numbered: Path) -> None:
    np.savez(numbered / "t.npz", x=np.full((7, 1), -1.0, dtype=np.float32),
             y=np.ones(7, dtype=np.int64))
    task = load_task(DataSection(source="arrays", path="n.npz", test_path="t.npz"), numbered)
    assert _rows(task.test) == [-1] * 7 and len(task.train) == 100
    assert task.splits.refer_to["test"] == "rows of 'x' in t.npz"
    np.savez(numbered / "wide.npz", x=np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(StudioError, match=r"wide.npz: samples of shape \[2\] where n.npz has "
                                          r"\[1\]"):
        load_task(DataSection(source="arrays", path="n.npz", test_path="wide.npz"), numbered)


def test_too_few_samples_to_split(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(StudioError, match=r"1 sample.* leave none to train on"):
        load_task(DataSection(source="arrays", path="one.npy"), tmp_path)


def test_demo_keeps_its_shipped_split_and_can_drop_labels() -> None:
    task = load_task(DataSection(train_samples=100, calibration_samples=16))
    assert len(task.train) == 100 and len(task.test) == 1000 and task.num_classes == 10
    unlabelled = load_task(DataSection(labelled=False, metric="top1_agreement"))
    assert not unlabelled.labelled and unlabelled.metric == "top1_agreement"
    assert len(unlabelled.test.tensors) == 1
    assert torch.equal(unlabelled.test.tensors[0], task.test.tensors[0])
