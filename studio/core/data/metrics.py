"""How good a model's outputs are: accuracy against labels, or agreement with the uncompressed
model's outputs when there are no labels (so a user can compress without labelling anything).

Every metric is accumulated batch by batch (:class:`MetricTotals`), so a large test set is never
held twice in memory; :func:`score` and :func:`agreement` are the one-shot forms. Sums are kept
in float64 so the figure does not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from studio.core.errors import StudioError

METRICS: tuple[str, ...] = ("accuracy", "cosine", "top1_agreement", "mse")
"""accuracy against labels; the rest compare outputs with a reference (the uncompressed model's
outputs on the same inputs)."""
METRIC_LABELS = {"accuracy": "Accuracy", "cosine": "Cosine agreement",
                 "top1_agreement": "Top-1 agreement", "mse": "MSE vs original"}
"""How reports, notes and plots name each metric."""


def higher_is_better(metric: str) -> bool:
    """False only for ``mse``: an error, where the others are scores."""
    return metric != "mse"


def drop(metric: str, baseline: float, value: float) -> float:
    """How much worse ``value`` is than ``baseline``; positive means worse for every metric."""
    return baseline - value if higher_is_better(metric) else value - baseline


def _array(values: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().float().cpu().numpy() if values.is_floating_point() \
            else values.detach().cpu().numpy()
    return np.asarray(values)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise StudioError(f"metric {metric!r}: use one of {', '.join(METRICS)}")


class MetricTotals:
    """Running sums of one metric over batches: ``add(outputs, target)`` then ``value()``.

    ``target`` is the labels for ``accuracy`` (class ids, the outputs' last dim is the class),
    otherwise the reference outputs for the same samples, of the same shape as ``outputs``.
    """

    def __init__(self, metric: str) -> None:
        _check_metric(metric)
        self.metric = metric
        self.total = 0.0
        self.count = 0

    def add(self, outputs: np.ndarray | Tensor, target: np.ndarray | Tensor) -> None:
        out, ref = _array(outputs), _array(target)
        if self.metric == "accuracy":
            if out.shape[:-1] != ref.shape:
                raise StudioError(f"accuracy: outputs of shape {list(out.shape)} do not give one "
                                  f"score per class for labels of shape {list(ref.shape)}")
            self.total += float((out.argmax(-1) == ref).sum())
            self.count += ref.size
            return
        if out.shape != ref.shape:
            raise StudioError(f"{self.metric}: outputs of shape {list(out.shape)} cannot be "
                              f"compared with reference outputs of shape {list(ref.shape)}")
        out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
        if self.metric == "cosine":
            a, b = out64.reshape(len(out64), -1), ref64.reshape(len(ref64), -1)
            norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            cosines = (a * b).sum(1) / np.maximum(norms, 1e-12)
            both_zero = (np.abs(a).sum(1) == 0) & (np.abs(b).sum(1) == 0)
            self.total += float(np.where(both_zero, 1.0, cosines).sum())
            self.count += len(a)
        elif self.metric == "top1_agreement":
            if out.ndim < 2 or out.shape[-1] < 2:
                raise StudioError(f"top1_agreement: outputs of shape {list(out.shape)} hold no "
                                  "scores per class to take the top one of; use cosine or mse")
            self.total += float((out.argmax(-1) == ref.argmax(-1)).sum())
            self.count += out[..., 0].size
        else:
            self.total += float(((out64 - ref64) ** 2).sum())
            self.count += out.size

    def value(self) -> float:
        if self.count == 0:
            raise StudioError(f"{self.metric}: no samples to measure")
        return self.total / self.count


def score(metric: str, outputs: np.ndarray | Tensor, target: np.ndarray | Tensor) -> float:
    """``metric`` of ``outputs`` against labels (accuracy) or reference outputs (agreement)."""
    totals = MetricTotals(metric)
    totals.add(outputs, target)
    return totals.value()


def accuracy(outputs: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> float:
    """Fraction of samples whose arg-max over the last dim is the label."""
    return score("accuracy", outputs, labels)


def cosine(reference: np.ndarray | Tensor, outputs: np.ndarray | Tensor) -> float:
    """Mean over samples of the cosine similarity of each sample's flattened outputs."""
    return score("cosine", outputs, reference)


def top1_agreement(reference: np.ndarray | Tensor, outputs: np.ndarray | Tensor) -> float:
    """Fraction of rows (samples, or tokens for N x L x C outputs) with the same arg-max."""
    return score("top1_agreement", outputs, reference)


def mse(reference: np.ndarray | Tensor, outputs: np.ndarray | Tensor) -> float:
    """Mean squared difference over every output element."""
    return score("mse", outputs, reference)


def is_class_scores(values: np.ndarray | Tensor, outputs_in_model: int = 1) -> bool:
    """Whether ``values`` is a [batch, classes] score tensor, the one kind whose arg-max is a
    class: 2-D with more than one column, from a model with one output. A detector's boxes
    ([N, K, 4]) and scores are not, and a multi-output model's 2-D tensors are [batch,
    anchors] as often as [batch, classes], so they get cosine and MSE only."""
    return may_be_class_scores(np.shape(values), outputs_in_model)


def may_be_class_scores(shape: Sequence[int | str], outputs_in_model: int = 1) -> bool:
    """:func:`is_class_scores` from a shape whose dims may be unknown (names, or 0)."""
    last = shape[-1] if shape else 0
    return outputs_in_model == 1 and len(shape) == 2 and (
        not isinstance(last, int) or last == 0 or last > 1)


def check_top1_fits(name: str, shape: Sequence[int | str], outputs_in_model: int,
                    where: str = "data") -> None:
    """A :class:`StudioError` when ``top1_agreement`` is asked of an output that is not class
    scores: an arg-max over box coordinates means nothing."""
    if not may_be_class_scores(shape, outputs_in_model):
        which = (f"first of {outputs_in_model} outputs" if outputs_in_model > 1
                 else "output")
        dims = ", ".join(str(d) for d in shape)
        raise StudioError(f"{where}: metric top1_agreement compares classes, but the model's "
                          f"{which} ({name!r}, shape [{dims}]) is not one score per class "
                          "([batch, classes]); use cosine or mse")


def one_value_per_sample(shape: Sequence[int | str]) -> bool:
    """Whether an output of this shape ([batch, ...]) holds one value per sample ([N], [N, 1]):
    every dim after the batch known to be 1. Per-sample cosine of one value is only whether
    the signs agree, so it reads 1.0 whatever the model does."""
    return all(isinstance(dim, int) and dim == 1 for dim in shape[1:])


def check_cosine_fits(name: str, shape: Sequence[int | str], where: str = "data") -> None:
    """A :class:`StudioError` when ``cosine`` is asked of an output with one value per sample
    (see :func:`one_value_per_sample`)."""
    if one_value_per_sample(shape):
        dims = ", ".join(str(d) for d in shape)
        raise StudioError(f"{where}: metric cosine compares each sample's outputs as a vector, "
                          f"but the model's output {name!r} (shape [{dims}]) gives one value per "
                          "sample, whose cosine is only its sign (1.0 whatever the model does); "
                          "use mse (or auto)")


def agreement(reference: np.ndarray | Tensor, outputs: np.ndarray | Tensor,
              outputs_in_model: int = 1) -> dict[str, float | None]:
    """All three agreement figures; ``top1_agreement`` is None unless the outputs are class
    scores (see :func:`is_class_scores`)."""
    ref = _array(reference)
    return {"cosine": cosine(ref, outputs),
            "top1_agreement": top1_agreement(ref, outputs)
            if is_class_scores(ref, outputs_in_model) else None,
            "mse": mse(ref, outputs)}


def agreement_by_output(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
                        ) -> dict[str, dict[str, float | None]]:
    """:func:`agreement` of each output of a model with several, by output name."""
    return {name: agreement(reference[name], values, len(outputs))
            for name, values in outputs.items()}
