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
    "onnx_bytes": Axis("onnx_bytes", "Size (MB)", 1e-6),
    "latency_ms": Axis("latency_ms", "Latency (ms)", 1.0),
    "macs": Axis("macs", "MACs (M)", 1e-6),
}
"""The x axes the Pareto plot offers, in combo order."""


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
