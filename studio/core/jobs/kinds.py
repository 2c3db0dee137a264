"""Every kind of job, registered in one place: the child process, the CLI and the GUI start a
job by its kind's name and a :class:`JobSpec`, so a new kind (a search, a data check) is one
entry in :data:`KINDS`.

The spec is plain data, so it crosses the process boundary as JSON (see ``child``, which also
checks ``data_consent`` there). ``trust`` lets the job run code from the model or data files:
the CLI's ``--trust``, or the consent the child verified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.core.engine.data_check import data_check_job
from studio.core.engine.run import run_recipe
from studio.core.engine.sensitivity import sensitivity_job
from studio.core.errors import StudioError
from studio.core.jobs.cancel import CancelToken
from studio.core.jobs.events import Event
from studio.core.plan.recipe import Recipe


@dataclass(frozen=True)
class JobSpec:
    kind: str
    recipe: Recipe
    base_dir: Path | None = None
    """Where the recipe's relative paths (model, data) start."""
    out_dir: Path | None = None
    device: str | None = None
    trust: bool = False
    """The user trusts the model file: it may be unpickled, and (CLI) an architecture outside
    the studio's registry that the recipe names may be called."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the kind's own (a sensitivity sweep's levels, check_data's
    ``vocabulary``, ...)."""
    data_consent: list[dict[str, Any]] = field(default_factory=list)
    source: str = "recipe"
    """How messages name the recipe (its file, "Run Plan")."""
    trust_data: bool = False
    """A ``function`` data source may run. Never read from a spec file: set by whoever verified
    the consent (the CLI's ``--trust``, or the child once ``data_consent`` matches the code)."""
    architecture: str | None = None
    """The one architecture outside the registry the user allowed (the window's consent): it
    may be called, and nothing else in the model file gains trust by it."""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "recipe": self.recipe.model_dump(mode="json"),
                "base_dir": None if self.base_dir is None else str(self.base_dir),
                "out_dir": None if self.out_dir is None else str(self.out_dir),
                "device": self.device, "trust": self.trust, "options": dict(self.options),
                "data_consent": list(self.data_consent), "source": self.source,
                "architecture": self.architecture}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobSpec:
        return cls(kind=str(data.get("kind", "run")),
                   recipe=Recipe.model_validate(data["recipe"]),
                   base_dir=Path(data["base_dir"]) if data.get("base_dir") else None,
                   out_dir=Path(data["out_dir"]) if data.get("out_dir") else None,
                   device=data.get("device"), trust=bool(data.get("trust", False)),
                   options=dict(data.get("options") or {}),
                   data_consent=list(data.get("data_consent") or []),
                   architecture=data.get("architecture") or None,
                   source=str(data.get("source", "recipe")))


@dataclass(frozen=True)
class JobKind:
    name: str
    title: str
    events: Callable[[JobSpec, CancelToken], Iterator[Event]]
    """The job itself: a generator of events that checks the token at every batch."""


def _out_dir(spec: JobSpec) -> Path:
    if spec.out_dir is None:
        raise StudioError(f"{spec.source}: a {spec.kind} job needs a folder for its outputs")
    return spec.out_dir


def _run(spec: JobSpec, token: CancelToken) -> Iterator[Event]:
    yield from run_recipe(spec.recipe, spec.base_dir, _out_dir(spec), token, spec.trust,
                          spec.device, spec.source, trust_data=spec.trust_data,
                          architecture=spec.architecture)


def _sensitivity(spec: JobSpec, token: CancelToken) -> Iterator[Event]:
    yield from sensitivity_job(spec.recipe, spec.base_dir, token, device=spec.device,
                               trust=spec.trust, trust_data=spec.trust_data,
                               architecture=spec.architecture, **spec.options)


def _check_data(spec: JobSpec, token: CancelToken) -> Iterator[Event]:
    yield from data_check_job(spec.recipe, spec.base_dir, _out_dir(spec), token,
                              trust=spec.trust_data, vocabulary=spec.options.get("vocabulary"))


def _search(spec: JobSpec, token: CancelToken) -> Iterator[Event]:
    from studio.core.search.job import search_job  # Optuna only for searches (~0.5 s import)

    yield from search_job(spec.recipe, spec.base_dir, _out_dir(spec), token, spec.options,
                          spec.trust, spec.source)


def _supernet(spec: JobSpec, token: CancelToken) -> Iterator[Event]:
    from studio.core.search.job import search_settings
    from studio.core.search.subnet import train_supernet_job

    yield from train_supernet_job(spec.recipe, spec.base_dir, _out_dir(spec), token,
                                  search_settings(spec.options, spec.source), spec.trust,
                                  spec.source)


KINDS: dict[str, JobKind] = {kind.name: kind for kind in (
    JobKind("run", "Run a recipe: compress, export ONNX, measure", _run),
    JobKind("sensitivity", "Sweep each layer's sparsity and bits", _sensitivity),
    JobKind("check_data", "Load the data and check it fits the model", _check_data),
    JobKind("search", "Search plans: the metric against size, MACs or latency", _search),
    JobKind("supernet", "Train a once-for-all supernet (elastic width and depth)", _supernet),
)}


def job_events(spec: JobSpec, token: CancelToken) -> Iterator[Event]:
    """The events of the job ``spec`` describes."""
    kind = KINDS.get(spec.kind)
    if kind is None:
        raise StudioError(f"unknown job kind {spec.kind!r}; known: {', '.join(KINDS)}")
    yield from kind.events(spec, token)
