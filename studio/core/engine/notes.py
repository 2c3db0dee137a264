"""Plain words for what the measurements show, above all when a choice cannot pay off."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from studio.core.data.metrics import METRIC_LABELS, needs_reference
from studio.core.data.metrics import drop as metric_drop

SLOWER_THRESHOLD = 0.9
NOTABLE_DROP = 0.01
SCORES = ("accuracy", "cosine", "top1_agreement")
"""Metrics whose drop reads as points of a 0-1 score (MSE has no such scale)."""
NOTABLE_PERPLEXITY_RATIO = 1.1
"""Perplexity has no 0-1 scale either; a rise by a tenth is one a reader of the text notices."""


def drop_advice(can_train: bool, dynamic_convs: bool = False,
                quantized_layers: Sequence[str] = ()) -> str:
    """What the user can do about a metric drop with this model, and only that, for torch and
    ONNX-only runs alike: a model that cannot train here (an ONNX file) is never told to
    fine-tune. ``quantized_layers`` (in graph order, named as ``plan.layers`` takes them) names
    the usual suspects to leave float: the first and the last."""
    steps = []
    if dynamic_convs:
        steps.append("using static int8 for the convolutions (act_bits: int8, calibrated on your "
                     "data) instead of dynamic int8, which gives their activations one range "
                     "per batch at run time")
    if quantized_layers or not can_train:
        edges = list(dict.fromkeys([*quantized_layers[:1], *quantized_layers[-1:]]))
        suspects = (f"; the first and last often are: {', '.join(repr(n) for n in edges)}"
                    if edges else "")
        steps.append(f"keeping the most sensitive layers float (exclude: true in "
                     f"plan.layers{suspects})")
    if can_train:
        if quantized_layers:
            steps.append("quantization-aware training (quantize: {qat: true} with train "
                         "epochs), so the weights learn the int8 grid")
        steps += ["training longer (more fine-tuning epochs) or distilling",
                  "compressing the most sensitive layers less"]
    return "; or ".join(steps)


def honesty_notes(baseline: dict[str, Any], compressed: dict[str, Any],
                  sparse_layers: int, quantized: bool, advice: str | None = None
                  ) -> list[str]:
    """``advice`` says what to do about a metric drop (default: :func:`drop_advice` for a
    model that can be trained)."""
    notes = []
    base_latency, comp_latency = baseline["latency_ms"], compressed["latency_ms"]
    for batch, before in base_latency.items():
        ratio = comp_latency[batch] / before if before else 1.0
        if ratio > SLOWER_THRESHOLD:
            reasons = []
            if sparse_layers:
                reasons.append("unstructured/N:M zeros are computed densely by onnxruntime on CPU")
            if quantized:
                reasons.append("int8 kernels only pay off on layers with enough work per call, "
                               "and quantize/dequantize steps cost time on small tensors")
            why = "; ".join(reasons) or "the compressed graph does the same work"
            notes.append(f"Not faster at {batch.replace('_', ' ')}: {ratio:.2f}× the original's "
                         f"latency on onnxruntime CPU ({why}).")
    if sparse_layers and compressed["onnx_bytes"] >= 0.95 * baseline["onnx_bytes"]:
        notes.append(
            f"The ONNX file is not smaller ({compressed['onnx_bytes'] / baseline['onnx_bytes']:.2f}"
            f"×): zeros are stored densely. Compressed for download it is "
            f"{compressed['zip_bytes'] / baseline['zip_bytes']:.2f}× the original's zip.")
    metric = compressed["metric"]["name"]
    drop = metric_drop(metric, baseline["metric"]["value"], compressed["metric"]["value"])
    if metric in SCORES and drop > NOTABLE_DROP:  # MSE has no scale to call a drop large
        name = METRIC_LABELS[metric] + (" with the original" if needs_reference(metric) else "")
        notes.append(f"{name} dropped {drop * 100:.1f} points. To recover it, try "
                     f"{advice or drop_advice(can_train=True)}.")
    before, after = baseline["metric"]["value"], compressed["metric"]["value"]
    if metric == "perplexity" and before > 0 and after > NOTABLE_PERPLEXITY_RATIO * before:
        notes.append(f"Perplexity rose from {before:.2f} to {after:.2f} ({after / before:.2f}× "
                     "the original's; lower is better): compare the two greedy samples in the "
                     f"report. To recover it, try {advice or drop_advice(can_train=True)}.")
    return notes
