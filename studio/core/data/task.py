"""A task's data: explicit train / test / calibration splits of one dataset, labelled or not.

Labelled datasets are ``TensorDataset(inputs, labels)``; unlabelled ones hold the inputs only
(``TensorDataset(inputs)``), and their metric is agreement with the uncompressed model. Data for
an ONNX file taking several inputs is a :class:`NamedInputs` dataset: the same two tensors (the
first named input, labels) plus every named input, row for row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from studio.core.demo.data import load_demo_digits

SPLITS_FILE = "splits.json"


@dataclass(frozen=True)
class Splits:
    """Which samples went where, so an experiment can be repeated and audited.

    ``indices`` maps ``train`` (the whole training split), ``fine_tune`` (what recovery trains
    on: the first ``train_samples`` of ``train``), ``calibration`` (drawn from ``train`` only)
    and ``test`` to sample numbers; ``refer_to`` says what each list counts (rows of a file,
    images in sorted path order, ...).
    """

    source: str
    seed: int
    indices: dict[str, list[int]]
    refer_to: dict[str, str]
    path: str | None = None
    test_path: str | None = None

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(values) for name, values in self.indices.items()}

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "path": self.path, "test_path": self.test_path,
                "seed": self.seed, "sizes": self.sizes, "refer_to": self.refer_to,
                "indices": self.indices}


class NamedInputs(TensorDataset):
    """A dataset of several model inputs by name (``.npz`` arrays named like an ONNX file's
    inputs). ``tensors`` stay ``(first input, [labels])`` as in every dataset here, so labels
    and sizes read the same; ``named`` holds every input, the first one included."""

    def __init__(self, named: Mapping[str, Tensor], labels: Tensor | None = None) -> None:
        first = next(iter(named.values()))
        super().__init__(first, *(() if labels is None else (labels,)))
        self.named = dict(named)


def model_inputs(dataset: TensorDataset) -> Tensor | dict[str, Tensor]:
    """What a model is fed from ``dataset``: its one input tensor, or every named input."""
    return dict(dataset.named) if isinstance(dataset, NamedInputs) else dataset.tensors[0]


def input_names(dataset: TensorDataset) -> tuple[str, ...]:
    """The names of ``dataset``'s inputs; empty when it holds one unnamed input tensor."""
    return tuple(dataset.named) if isinstance(dataset, NamedInputs) else ()


def first_rows(dataset: TensorDataset, count: int) -> TensorDataset:
    """The first ``count`` samples of ``dataset``, every input and the labels alike."""
    if isinstance(dataset, NamedInputs):
        labels = dataset.tensors[1][:count] if len(dataset.tensors) > 1 else None
        return NamedInputs({name: value[:count] for name, value in dataset.named.items()},
                           labels)
    return TensorDataset(*(tensor[:count] for tensor in dataset.tensors))


@dataclass(frozen=True)
class TaskData:
    train: TensorDataset
    """What recovery fine-tunes on (already cut to ``train_samples``)."""
    test: TensorDataset
    calibration: TensorDataset
    """Drawn from the training split, never from the test split."""
    num_classes: int | None
    name: str
    labelled: bool = True
    metric: str = "accuracy"
    """accuracy, or cosine / top1_agreement / mse agreement with the uncompressed model."""
    metric_reason: str = ""
    """Why this metric (set by a run once the model's output is known)."""
    splits: Splits | None = field(default=None, compare=False)
    constants: dict[str, np.ndarray] = field(default_factory=dict, compare=False)
    """Model inputs fed the same value with every batch (``data.constants``), by name."""

    @property
    def input_names(self) -> tuple[str, ...]:
        """The names of the per-sample inputs; empty when the data gives one unnamed tensor."""
        return input_names(self.test)

    def summary(self) -> dict[str, Any]:
        """What a report says about the data (the indices go to ``splits.json``)."""
        sizes = self.splits.sizes if self.splits is not None else {
            "fine_tune": len(self.train), "calibration": len(self.calibration),
            "test": len(self.test)}
        summary = {"name": self.name, "source": self.splits.source if self.splits else None,
                   "labelled": self.labelled, "metric": self.metric,
                   "num_classes": self.num_classes, "sizes": sizes}
        if self.metric_reason:
            summary["metric_reason"] = self.metric_reason
        if self.input_names or self.constants:
            summary["inputs"] = {"arrays": list(self.input_names),
                                 "constants": {name: value.tolist()
                                               for name, value in self.constants.items()}}
        return summary


def demo_task(calibration_samples: int = 256, seed: int = 0,
              train_samples: int | None = None) -> TaskData:
    """The built-in digits with the split they ship with (4,000 train / 1,000 test)."""
    digits = load_demo_digits()
    generator = torch.Generator().manual_seed(seed)
    count = len(digits.train_labels)
    chosen = torch.randperm(count, generator=generator)[:calibration_samples]
    fine_tune = count if train_samples is None else min(train_samples, count)
    splits = Splits(
        source="demo", seed=seed,
        indices={"train": list(range(count)), "fine_tune": list(range(fine_tune)),
                 "calibration": chosen.tolist(),
                 "test": list(range(len(digits.test_labels)))},
        refer_to=dict.fromkeys(("train", "fine_tune", "calibration"),
                               "samples of the demo's training split (train_index of "
                               "mnist-5k.npz)") | {"test": "samples of the demo's test split "
                                                           "(test_index of mnist-5k.npz)"})
    return TaskData(
        train=TensorDataset(digits.train_images[:fine_tune], digits.train_labels[:fine_tune]),
        test=TensorDataset(digits.test_images, digits.test_labels),
        calibration=TensorDataset(digits.train_images[chosen], digits.train_labels[chosen]),
        num_classes=10,
        name="demo digits (MNIST 4,000 / 1,000)",
        splits=splits,
    )


def batches(dataset: TensorDataset, batch_size: int, shuffle: bool = False,
            seed: int = 0) -> DataLoader:
    """Deterministic loader: the same seed gives the same order on every run."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
