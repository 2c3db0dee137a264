"""What the driver needs from a search, whatever it searches: a space, objectives, a trial
function that runs in a worker, and constraints read from a trial's outcome.

A problem is plain data (picklable): it travels to worker processes and Ray nodes, which build
what they need (the model, the data) once per process and keep it for the next trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from optuna.distributions import BaseDistribution

Fidelity = Literal["proxy", "full"]


@dataclass(frozen=True)
class TrialRequest:
    number: int
    params: dict[str, Any]
    fidelity: Fidelity
    out_dir: str | None = None
    """Where a full-fidelity trial writes its files (a folder of the study's)."""


@dataclass
class TrialOutcome:
    """What one evaluation found: the objective values in the problem's order, the figures
    behind them, and, for full fidelity, the recipe it ran and the files it wrote."""

    values: list[float]
    figures: dict[str, float] = field(default_factory=dict)
    fidelity: Fidelity = "proxy"
    seconds: float = 0.0
    recipe: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    constraints: dict[str, float] = field(default_factory=dict)
    """Each constraint's excess by the figure it limits; 0 or less is feasible."""


class SearchProblem(Protocol):
    objectives: list[str]
    """Names, each minimised (a drop in points, a cost ratio)."""
    key: str
    """Tells this problem from another across processes: a worker keeps what it prepared for
    it under this key."""

    def distributions(self) -> dict[str, BaseDistribution]: ...

    def prepare(self) -> None:
        """Open what trials need (model, data) in this process now and keep it, so a worker
        pays for it once, before its first trial."""
        ...

    def evaluate(self, request: TrialRequest) -> TrialOutcome:
        """Run in a worker; may raise (the trial is recorded as failed with the reason)."""
        ...

    def work(self, params: Mapping[str, Any]) -> float:
        """Roughly how much a trial with these parameters costs, relative to the others: a
        generation is handed out largest first, so its slowest trial does not start last."""
        ...

    def describe(self, params: Mapping[str, Any]) -> str:
        """A short line saying what the parameters choose."""
        ...
