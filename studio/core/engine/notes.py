"""Plain words for what the measurements show, above all when a choice cannot pay off."""

from __future__ import annotations

from typing import Any

from studio.core.data.metrics import METRIC_LABELS
from studio.core.data.metrics import drop as metric_drop

SLOWER_THRESHOLD = 0.9
NOTABLE_DROP = 0.01
SCORES = ("accuracy", "cosine", "top1_agreement")
"""Metrics whose drop reads as points of a 0-1 score (MSE has no such scale)."""


def honesty_notes(baseline: dict[str, Any], compressed: dict[str, Any],
                  sparse_layers: int, quantized: bool) -> list[str]:
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
        name = METRIC_LABELS[metric] + ("" if metric == "accuracy" else " with the original")
        notes.append(f"{name} dropped {drop * 100:.1f} points: recover with more "
                     "fine-tuning epochs or distillation, or compress the most sensitive "
                     "layers less.")
    return notes
