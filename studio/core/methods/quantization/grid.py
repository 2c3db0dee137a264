"""A weight rounded onto the integer grid of its planned bits, without any kernel: what the
sensitivity sweep and the layer view measure quantization error with."""

from __future__ import annotations

import torch
from torch import Tensor

from studio.core.plan.spec import BITS_PER_ELEMENT


@torch.no_grad()
def fake_quantize_weight(weight: Tensor, bits: str) -> Tensor:
    """``weight`` rounded as a per-output-channel symmetric integer (or cast to fp16/bf16):
    the first-order effect of weight-only quantization, without any kernel."""
    if bits in ("fp16", "bf16"):
        return weight.to(torch.float16 if bits == "fp16" else torch.bfloat16).to(weight.dtype)
    if bits == "fp32":
        return weight.clone()
    qmax = 2 ** (BITS_PER_ELEMENT[bits] - 1) - 1
    amax = weight.abs().flatten(1).amax(1).clamp_min(1e-12)
    scale = (amax / qmax).view(-1, *([1] * (weight.dim() - 1)))
    return (weight / scale).round().clamp(-qmax, qmax) * scale
