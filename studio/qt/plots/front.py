"""The Pareto front of experiments, as a pure function so it can be tested without a window.

Minimise the x quantity (size, latency or MACs) and maximise the metric (the Pareto plot negates
one where lower is better): an experiment is on the front when no other experiment is at least as
good on both and strictly better on one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from studio.core.project.experiments import pareto_front as core_pareto_front


@dataclass(frozen=True)
class Axis:
    """One quantity the x axis can show: the point's key, its label and the scale to display."""

    key: str
    label: str
    scale: float

    def value(self, point: Mapping[str, object]) -> float:
        return float(point[self.key]) * self.scale  # type: ignore[arg-type]


AXES: dict[str, Axis] = {
    "onnx_bytes": Axis("onnx_bytes", "Size", 1.0),
    "latency_ms": Axis("latency_ms", "Latency", 1.0),
    "macs": Axis("macs", "MACs (M)", 1e-6),
}
"""The x axes the Pareto plot offers, in combo order (:func:`axis_for` gives the unit)."""


def axis_for(key: str, points: Sequence[Mapping[str, object]]) -> Axis:
    """The axis of ``key`` for these points: sizes in KiB or MiB (as the layer tree counts
    them), latency named with the batch it was timed at."""
    if key == "onnx_bytes":
        largest = max((float(p[key]) for p in points if p.get(key) is not None),  # type: ignore[arg-type]
                      default=0.0)
        return Axis(key, "Size (MiB)", 1 / 2**20) if largest >= 2**20 else \
            Axis(key, "Size (KiB)", 1 / 2**10)
    if key == "latency_ms":
        batches = {p.get("latency_batch") for p in points if p.get(key) is not None}
        batch = f"batch {batches.pop()}" if len(batches) == 1 else "largest batch timed"
        return Axis(key, f"Latency, {batch} (ms)", 1.0)
    return AXES[key]


def pareto_front(points: Sequence[Mapping[str, object]], x_key: str, y_key: str = "value",
                 higher_is_better: bool = True) -> list[str]:
    """Ids of the non-dominated points (minimise ``x_key``, best ``y_key``), by rising x;
    the core's :func:`studio.core.project.experiments.pareto_front` decides."""
    return [str(points[index]["id"])
            for index in core_pareto_front(points, x_key, y_key, higher_is_better)]


def step_line(xy: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Corners of the front as a staircase: the best metric reachable holds until the next
    point, so the line runs flat, then steps at each front point's x."""
    xs: list[float] = []
    ys: list[float] = []
    for i, (x, y) in enumerate(xy):
        if i:
            xs.append(x)
            ys.append(ys[-1])
        xs.append(x)
        ys.append(y)
    return xs, ys
