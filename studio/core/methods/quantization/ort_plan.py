"""Carry out a :class:`~studio.core.plan.ort_rules.QuantPlan` (the backend's decisions per node)
as onnxruntime quantization passes over an exported ONNX file."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from torch.utils.data import TensorDataset

from studio.core.export.onnx_export import save_onnx
from studio.core.methods.quantization.ort import quantize_onnx
from studio.core.models.onnx_feeds import Feeder
from studio.core.plan.ort_rules import QuantPlan


def apply_quant_plan(src: str | Path, dst: str | Path, plan: QuantPlan,
                     calibration: TensorDataset | None = None, per_channel: bool = True,
                     calibrate_method: str = "minmax", block_size: int = 32,
                     prepared: list[str] | None = None, feed: Feeder | None = None) -> Path:
    """Run the plan's passes on ``src`` (main pass, then one n-bit pass per bit width);
    ``prepared``, when given, receives how each pass prepared the file, in words; ``feed``
    makes the calibration feeds (see :func:`quantize_onnx`)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst.parent) as scratch:
        current = Path(src)
        steps: list[dict] = []
        if plan.mode is not None:
            steps.append({"mode": plan.mode, "exclude_nodes": plan.exclude_nodes})
        for bits in sorted(set(plan.matmul_nbits.values()), reverse=True):
            nodes = [n for n, b in plan.matmul_nbits.items() if b == bits]
            steps.append({"mode": "nbits", "nodes": nodes, "bits": bits})
        if not steps:  # nothing to quantize: the file is copied as it is
            return save_onnx(onnx.load(str(current), load_external_data=False), dst,
                             current.parent)
        for number, step in enumerate(steps):
            target = dst if number == len(steps) - 1 else Path(scratch) / f"step{number}.onnx"
            quantize_onnx(current, target, calibration=calibration, per_channel=per_channel,
                          calibrate_method=calibrate_method, block_size=block_size,
                          prepared=prepared, feed=feed, **step)
            current = target
    return dst
