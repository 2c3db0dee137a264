"""Seeded, explicit splits: test (a separate set, or a held-out fraction), the training split,
the fine-tuning subset and the calibration draw (from the training split only)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch.utils.data import TensorDataset

from studio.core.data.metrics import check_cosine_fits, one_value_per_sample
from studio.core.data.samples import Samples
from studio.core.data.task import NamedInputs, Splits, TaskData
from studio.core.errors import StudioError
from studio.core.plan.stages import DataSection


def _dataset(samples: Samples, index: torch.Tensor, labelled: bool) -> TensorDataset:
    if samples.named:
        return NamedInputs({name: inputs[index] for name, inputs in samples.named.items()},
                           samples.labels[index] if labelled and samples.labels is not None
                           else None)
    if labelled:
        assert samples.labels is not None
        return TensorDataset(samples.inputs[index], samples.labels[index])
    return TensorDataset(samples.inputs[index])


def resolve_metric(section: DataSection, labelled: bool, where: str) -> str:
    """``auto`` means perplexity for text, accuracy with labels and cosine agreement without,
    until the model's output is known (:func:`metric_for_output`)."""
    if section.metric == "auto":
        if section.source == "text":
            return "perplexity"
        return "accuracy" if labelled else "cosine"
    if section.metric == "accuracy" and not labelled:
        raise StudioError(f"{where}: metric accuracy needs labels, and this data has none (or "
                          "labelled: false); use cosine, top1_agreement or mse")
    return section.metric


def metric_for_output(section: DataSection, data: TaskData, name: str,
                      shape: Sequence[int | str], where: str) -> TaskData:
    """The task metric once the model's first output (``name`` of ``shape``) is known, and why:
    ``auto`` on unlabelled data takes MSE for one value per sample (cosine would read only its
    sign) and cosine otherwise; cosine asked for on such an output is refused."""
    metric, reason = _chosen_metric(section, data.metric, name, shape, where)
    return dataclasses.replace(data, metric=metric, metric_reason=reason)


def _chosen_metric(section: DataSection, metric: str, name: str, shape: Sequence[int | str],
                   where: str) -> tuple[str, str]:
    dims = "[" + ", ".join(["N", *(str(d) for d in shape[1:])]) + "]"
    if metric == "perplexity":
        if len(shape) != 3:
            raise StudioError(f"{where}: metric perplexity needs next-token logits [N, "
                              f"sequence, vocabulary] from a causal language model; the "
                              f"model's output {name!r} is {dims}")
        return metric, ("next-token perplexity of the held-out text blocks (lower is better)"
                        + ("" if section.metric == "perplexity" else "; auto: text data"))
    if section.metric != "auto":
        if metric == "cosine":
            check_cosine_fits(name, shape, where)
        return metric, "asked for in the recipe"
    if metric == "accuracy":
        return metric, "auto: the data has labels"
    if one_value_per_sample(shape):
        return "mse", (f"auto: unlabelled data, and output {name!r} {dims} gives one value per "
                       "sample, whose cosine would be only its sign")
    return "cosine", (f"auto: unlabelled data, compared with the original's output {name!r} "
                      f"{dims}")


def split_task(pool: Samples, test: Samples | None, section: DataSection, name: str,
               where: str) -> TaskData:
    """Cut ``pool`` (and a separate ``test``, when given) into the task's splits."""
    has_labels = pool.labels is not None and (test is None or test.labels is not None)
    if section.labelled and not has_labels:
        missing = where if pool.labels is None else f"{where} (test_path)"
        raise StudioError(f"{missing}: labelled is true but the data has no labels")
    labelled = has_labels and section.labelled is not False
    generator = torch.Generator().manual_seed(section.split_seed)
    order = torch.randperm(len(pool), generator=generator)
    if test is None:
        n_test = max(1, round(len(pool) * section.test_fraction))
        if n_test >= len(pool):
            raise StudioError(f"{where}: {len(pool)} sample(s) leave none to train on after "
                              f"holding out test_fraction {section.test_fraction}; add samples "
                              "or give test_path")
        test_index, train_index = order[:n_test].sort().values, order[n_test:]
        test_samples = pool
    else:
        test_index, train_index, test_samples = torch.arange(len(test)), order, test
    calibration = train_index[torch.randperm(len(train_index), generator=generator)
                              [:section.calibration_samples]]
    fine_tune = train_index[:section.train_samples]
    num_classes = None
    if labelled:
        assert pool.labels is not None and test_samples.labels is not None
        num_classes = len(pool.classes) if pool.classes else 1 + int(
            max(pool.labels.max(), test_samples.labels.max()))
    test_origin = pool.origin if test is None else test.origin
    splits = Splits(
        source=section.source, seed=section.split_seed, path=section.path,
        test_path=section.test_path,
        indices={"train": train_index.tolist(), "fine_tune": fine_tune.tolist(),
                 "calibration": calibration.tolist(), "test": test_index.tolist()},
        refer_to={"train": pool.origin, "fine_tune": pool.origin, "calibration": pool.origin,
                  "test": test_origin})
    return TaskData(
        train=_dataset(pool, fine_tune, labelled),
        test=_dataset(test_samples, test_index, labelled),
        calibration=_dataset(pool, calibration, labelled),
        num_classes=num_classes, name=name, labelled=labelled,
        metric=resolve_metric(section, labelled, where), splits=splits)
