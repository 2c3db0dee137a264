"""bf16 autocast when it pays: decided by timing a few real training steps both ways.

On CPUs with native bf16 (these have avx512_bf16) a MiniLM step ran 1.95x faster with an output
cosine of 0.99997 to fp32; on CPUs without it, or for small models where the casts cost more
than the matrix products save, bf16 is slower. So ``auto`` measures instead of guessing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

TRIAL_STEPS = 3
"""Timed steps per precision (after one warm-up step each)."""
MIN_PARAMS_FOR_BF16 = 1_000_000
"""Below this many parameters ``auto`` stays in fp32 without timing: such models are too small
for bf16 to pay (and the timing would cost more than it could save)."""


@dataclass(frozen=True)
class PrecisionChoice:
    used: str
    """fp32 or bf16."""
    reason: str
    step_ms: dict[str, float] | None = None
    """Median forward+backward time of the trial steps, per precision."""

    def to_json(self) -> dict[str, object]:
        return {"used": self.used, "reason": self.reason, "step_ms": self.step_ms}


def autocast(device: torch.device, precision: str) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _median_ms(step: Callable[[str], None], precision: str, device: torch.device) -> float:
    times = []
    for attempt in range(TRIAL_STEPS + 1):
        started = time.perf_counter()
        step(precision)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if attempt:  # the first is a warm-up
            times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 3)


def choose_precision(requested: str, params: int, step: Callable[[str], None],
                     device: torch.device) -> PrecisionChoice:
    """``requested`` fp32 or bf16 is used as asked; ``auto`` times ``step`` (one forward and
    backward on a real batch) in both and keeps bf16 only when it is faster."""
    if requested != "auto":
        return PrecisionChoice(requested, "as asked (train.precision)")
    if params < MIN_PARAMS_FOR_BF16:
        return PrecisionChoice("fp32", f"{params:,} parameters: too small for bf16 to pay")
    timings = {precision: _median_ms(step, precision, device) for precision in ("fp32", "bf16")}
    faster = timings["bf16"] < timings["fp32"]
    return PrecisionChoice(
        "bf16" if faster else "fp32",
        f"timed {TRIAL_STEPS} steps: bf16 {timings['bf16']:.1f} ms vs fp32 "
        f"{timings['fp32']:.1f} ms per step" + ("" if faster else "; bf16 was slower here"),
        timings)
