"""A task's data: explicit train / test / calibration splits of one labelled dataset."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, TensorDataset

from studio.core.demo.data import load_demo_digits


@dataclass(frozen=True)
class TaskData:
    train: TensorDataset
    test: TensorDataset
    calibration: TensorDataset
    """Drawn from the training split, never from the test split."""
    num_classes: int
    name: str


def demo_task(calibration_samples: int = 256, seed: int = 0) -> TaskData:
    digits = load_demo_digits()
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(digits.train_labels), generator=generator)[:calibration_samples]
    return TaskData(
        train=TensorDataset(digits.train_images, digits.train_labels),
        test=TensorDataset(digits.test_images, digits.test_labels),
        calibration=TensorDataset(digits.train_images[chosen], digits.train_labels[chosen]),
        num_classes=10,
        name="demo digits (MNIST 4,000 / 1,000)",
    )


def batches(dataset: TensorDataset, batch_size: int, shuffle: bool = False,
            seed: int = 0) -> DataLoader:
    """Deterministic loader: the same seed gives the same order on every run."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
