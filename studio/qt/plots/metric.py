"""How each task metric reads on an axis: its name in words, scale and unit, and which way is
better. Accuracy is only one of them: unlabelled data is scored by agreement with the
uncompressed model (cosine, top-1 agreement, MSE)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from studio.core.data.metrics import METRIC_LABELS, higher_is_better


@dataclass(frozen=True)
class MetricAxis:
    name: str
    label: str
    scale: float
    unit: str

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.name)

    @property
    def title(self) -> str:
        """The axis title: "Accuracy (%)", "Cosine agreement", "MSE vs original (lower is
        better)"."""
        unit = f" ({self.unit})" if self.unit else ""
        return f"{self.label}{unit}" + ("" if self.higher_is_better else " — lower is better")

    def text(self, value: float | None) -> str:
        """One value as the hover text shows it: "accuracy 98.50 %", "cosine agreement 0.9981"."""
        if value is None:
            return f"{self.label.lower()} —"
        if self.unit == "%":
            return f"{self.label.lower()} {value * self.scale:.2f} %"
        return f"{self.label.lower()} {value * self.scale:.4g}"


_PERCENT = ("accuracy", "top1_agreement")
_AXES = {name: MetricAxis(name, label, 100.0 if name in _PERCENT else 1.0,
                          "%" if name in _PERCENT else "")
         for name, label in METRIC_LABELS.items()}


def metric_axis(name: str | None) -> MetricAxis:
    """The axis of a metric named by a report (``None``: accuracy, what older reports meant)."""
    name = name or "accuracy"
    return _AXES.get(name, MetricAxis(name, name.replace("_", " ").capitalize(), 1.0, ""))


def common_metric(names: Iterable[str | None]) -> str | None:
    """The one metric every point shares (``None`` counts as accuracy); ``None`` when mixed."""
    found = {name or "accuracy" for name in names}
    return found.pop() if len(found) == 1 else None
