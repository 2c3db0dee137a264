"""What a job reports while it runs: plain data, JSON-ready, so it can cross a process boundary."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Progress:
    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class Metric:
    stage: str
    name: str
    value: float
    step: int


@dataclass(frozen=True)
class Log:
    message: str
    level: str = "info"


@dataclass(frozen=True)
class Artifact:
    kind: str
    path: str


@dataclass(frozen=True)
class Result:
    """A finished experiment: its report (see ``studio.core.engine.report``)."""

    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Trial:
    """One search trial as it stands: ``state`` running, complete or failed; ``fidelity``
    proxy or full; ``figures`` its numbers (drop_pt, cost ratios); ``reason`` why it failed."""

    number: int
    state: str
    fidelity: str = "proxy"
    figures: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    experiment: str = ""
    """The experiment id a full-fidelity trial was saved as."""


Event = Progress | Metric | Log | Artifact | Result | Trial
_TYPES: dict[str, type] = {cls.__name__.lower(): cls
                           for cls in (Progress, Metric, Log, Artifact, Result, Trial)}


def event_to_json(event: Event) -> dict[str, Any]:
    return {"event": type(event).__name__.lower(), **asdict(event)}


def event_from_json(data: dict[str, Any]) -> Event:
    values = dict(data)
    kind = values.pop("event")
    return _TYPES[kind](**values)


def drain(events: Iterator[Event]) -> Any:
    """Run a job (or a step's generator) to its end, dropping its events, and return what the
    generator returned: a search trial runs steps whose progress nobody watches."""
    while True:
        try:
            next(events)
        except StopIteration as stop:
            return stop.value
