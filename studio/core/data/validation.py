"""A validation split carved from the training data, for choosing between plans (a search).

A search that picked plans by their test-split score would report a test figure it had tuned
on. With ``data.validation_samples`` the last N samples of the fine-tuning split become the
split every figure is scored on, and are removed from fine-tuning and calibration; the test
split is then not read at all, and the report says so.
"""

from __future__ import annotations

import dataclasses

import torch

from studio.core.data.task import NamedInputs, Splits, TaskData
from studio.core.errors import StudioError


def _rows(dataset: torch.utils.data.TensorDataset, index: torch.Tensor
          ) -> torch.utils.data.TensorDataset:
    if isinstance(dataset, NamedInputs):
        labels = dataset.tensors[1][index] if len(dataset.tensors) > 1 else None
        return NamedInputs({name: value[index] for name, value in dataset.named.items()}, labels)
    return torch.utils.data.TensorDataset(*(tensor[index] for tensor in dataset.tensors))


def carve_validation(task: TaskData, count: int, where: str = "data") -> TaskData:
    """``task`` scored on the last ``count`` samples of its fine-tuning split instead of its
    test split; those samples leave fine-tuning and calibration."""
    size = len(task.train)
    if not 0 < count < size:
        raise StudioError(f"{where}: validation_samples {count} must leave samples to "
                          f"fine-tune on (the training split holds {size})")
    keep, held = torch.arange(size - count), torch.arange(size - count, size)
    calibration = task.calibration
    splits = task.splits
    if splits is not None:
        held_ids = set(splits.indices["fine_tune"][size - count:])
        chosen = [i for i, sample in enumerate(splits.indices["calibration"])
                  if sample not in held_ids]
        calibration = _rows(calibration, torch.tensor(chosen, dtype=torch.long))
        indices = dict(splits.indices)
        indices["validation"] = indices["fine_tune"][size - count:]
        indices["fine_tune"] = indices["fine_tune"][:size - count]
        indices["calibration"] = [indices["calibration"][i] for i in chosen]
        indices["test"] = []
        refer_to = {**splits.refer_to, "validation": splits.refer_to["fine_tune"]}
        splits = Splits(splits.source, splits.seed, indices, refer_to, splits.path,
                        splits.test_path)
    if len(calibration) == 0:
        raise StudioError(f"{where}: every calibration sample lies in the validation split; "
                          "lower validation_samples or raise calibration_samples")
    return dataclasses.replace(
        task, train=_rows(task.train, keep), test=_rows(task.train, held),
        calibration=calibration, splits=splits,
        name=f"{task.name}; scored on {count} validation samples carved from training (the "
             "test split is not used)")
