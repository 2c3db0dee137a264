"""How good a model's outputs are: accuracy against labels, agreement with the uncompressed
model's outputs when there are no labels (so a user can compress without labelling anything),
or a causal LM's perplexity on its own input text.

Every metric is accumulated batch by batch (:class:`MetricTotals`), so a large test set is never
held twice in memory; :func:`score` and :func:`agreement` are the one-shot forms. Sums are kept
in float64 so the figure does not depend on the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from studio.core.errors import StudioError

METRICS: tuple[str, ...] = ("accuracy", "cosine", "top1_agreement", "mse", "perplexity")
"""accuracy against labels; perplexity of next-token logits against the input tokens
themselves; the rest compare outputs with a reference (the uncompressed model's outputs on the
same inputs)."""
METRIC_LABELS = {"accuracy": "Accuracy", "cosine": "Cosine agreement",
                 "top1_agreement": "Top-1 agreement", "mse": "MSE vs original",
                 "perplexity": "Perplexity"}
"""How reports, notes and plots name each metric."""
LOWER_IS_BETTER = frozenset({"mse", "perplexity"})
"""Errors, where the others are scores."""
SELF_SCORED = frozenset({"accuracy", "perplexity"})
"""Measured against the data itself (labels, the next tokens), not the original's outputs."""


def higher_is_better(metric: str) -> bool:
    """False for ``mse`` and ``perplexity``: errors, where the others are scores."""
    return metric not in LOWER_IS_BETTER


def needs_reference(metric: str) -> bool:
    """Whether ``metric`` compares with the uncompressed model's outputs."""
    return metric not in SELF_SCORED


def metric_target(metric: str, inputs: np.ndarray | Tensor, labels: np.ndarray | Tensor | None,
                  reference: np.ndarray | Tensor | None) -> np.ndarray | Tensor:
    """What ``metric`` scores a batch's outputs against: the labels (accuracy), the input
    tokens (perplexity: each position predicts the next) or the reference outputs."""
    if metric == "perplexity":
        return inputs
    if metric == "accuracy":
        if labels is None:
            raise StudioError("accuracy needs labels; this data has none")
        return labels
    if reference is None:
        raise StudioError(f"{metric} compares with the uncompressed model's outputs; pass them")
    return reference


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
    the token ids (batch × sequence) for ``perplexity`` (outputs: next-token logits, batch ×
    sequence × vocabulary; ``total`` sums the negative log-likelihood of every token after the
    first, in nats), otherwise the reference outputs for the same samples, of the same shape as
    ``outputs``.
    """

    def __init__(self, metric: str) -> None:
        _check_metric(metric)
        self.metric = metric
        self.total = 0.0
        self.count = 0

    def add(self, outputs: np.ndarray | Tensor, target: np.ndarray | Tensor) -> None:
        if self.metric == "perplexity":
            self._add_tokens(outputs, target)
            return
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

    def _add_tokens(self, logits: np.ndarray | Tensor, tokens: np.ndarray | Tensor) -> None:
        """Next-token log-likelihood, one sequence at a time in float64 (a sequence's logits
        over a 50k vocabulary are already tens of megabytes)."""
        ids = torch.as_tensor(_array(tokens))
        scores = torch.as_tensor(_array(logits))
        if scores.dim() != 3 or ids.dim() != 2 or scores.shape[:2] != ids.shape:
            raise StudioError(f"perplexity: outputs of shape {list(scores.shape)} are not "
                              f"next-token logits (batch, sequence, vocabulary) for tokens of "
                              f"shape {list(ids.shape)}")
        vocabulary = scores.shape[-1]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocabulary):
            raise StudioError(f"perplexity: token ids outside the model's {vocabulary} logits")
        for row, targets in zip(scores, ids, strict=True):
            predicted = row[:-1].double().log_softmax(-1)
            self.total -= float(predicted.gather(-1, targets[1:, None].long()).sum())
            self.count += len(targets) - 1

    def value(self) -> float:
        if self.count == 0:
            raise StudioError(f"{self.metric}: no samples to measure")
        if self.metric == "perplexity":
            return math.exp(self.total / self.count)
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
