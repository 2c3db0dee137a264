"""The experiment history of a project: every finished job saved as it finishes.

Layout: ``<project>/experiments/<id>/experiment.json`` plus the artifact files beside it. Artifacts
are copied first and ``experiment.json`` is written atomically last, so a job killed mid-save
leaves a folder without ``experiment.json``, which :func:`load_experiments` ignores: the history
never holds an entry describing files that are not there. A corrupt entry is skipped and
reported, never allowed to hide the rest of the history.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from studio.core.atomic import write_text_atomic
from studio.core.data.metrics import higher_is_better
from studio.core.errors import StudioError
from studio.core.plan.plan import Plan
from studio.core.plan.recipe import PlanSection, Recipe

EXPERIMENTS_DIR = "experiments"
EXPERIMENT_FILE = "experiment.json"
STATUSES = ("finished", "failed", "cancelled")
LATENCY_BATCH = 64


@dataclass
class Experiment:
    id: str
    name: str
    created: str
    """ISO 8601 time in UTC; ids sort the same way."""
    status: str = "finished"
    plan: dict[str, Any] = field(default_factory=dict)
    """The recipe's plan section (``{"defaults": {...}, "layers": {...}}``)."""
    report: dict[str, Any] | None = None
    error: str | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
    """Kind -> path relative to the experiment's folder."""
    recipe: dict[str, Any] | None = None
    """The whole recipe it ran (plan, data and every job section), as JSON data; ``None`` in
    experiments saved before experiments kept it (only their plan is known)."""
    note: str = ""
    """The user's own words about it (the experiments table's Notes column)."""

    def settings(self) -> tuple[Plan, dict[str, BaseModel] | None]:
        """The plan and the job sections it ran with (``None``: not recorded, an older
        experiment). A recipe this version cannot read counts as not recorded."""
        if self.recipe is not None:
            try:
                recipe = Recipe.model_validate(self.recipe)
            except ValidationError:
                pass
            else:
                return recipe.to_plan(), recipe.stages()
        return PlanSection.model_validate(self.plan or {}).to_plan(), None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Experiment:
        if not isinstance(data, Mapping):
            raise ValueError("not a JSON object")
        known = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        missing = {"id", "name", "created"} - set(known)
        if missing:
            raise ValueError(f"missing {', '.join(sorted(missing))}")
        experiment = cls(**known)
        if experiment.status not in STATUSES:
            raise ValueError(f"unknown status {experiment.status!r}")
        return experiment


@dataclass(frozen=True)
class LoadedHistory:
    """What :func:`load_experiments_report` found: the good entries and the skipped ones."""

    experiments: list[Experiment]
    problems: list[str]
    """One line per skipped entry: its folder and why."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_experiment_id() -> str:
    """Sortable (UTC time first, to the microsecond) and unique (a random tail)."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f") + "-" + uuid.uuid4().hex[:6]


def new_experiment(name: str, plan: Mapping[str, Any] | None = None,
                   report: dict[str, Any] | None = None, status: str = "finished",
                   error: str | None = None, recipe: Recipe | None = None) -> Experiment:
    """An experiment stamped now, with a fresh id; ``recipe`` (the whole one it runs) also
    gives the plan when ``plan`` is not given."""
    if plan is None and recipe is not None:
        plan = recipe.plan.model_dump(mode="json", exclude_none=True)
    return Experiment(new_experiment_id(), name, now_iso(), status, dict(plan or {}), report,
                      error, recipe=None if recipe is None else
                      recipe.model_dump(mode="json", exclude_none=True))


def experiments_dir(project_dir: str | Path) -> Path:
    return Path(project_dir) / EXPERIMENTS_DIR


def experiment_dir(project_dir: str | Path, experiment_id: str) -> Path:
    return experiments_dir(project_dir) / experiment_id


def save_experiment(project_dir: str | Path, experiment: Experiment,
                    files: Mapping[str, str | Path] | None = None) -> Path:
    """Copy ``files`` (kind -> path) into the experiment's folder, then write
    ``experiment.json`` last and atomically. Returns the folder."""
    if experiment.status not in STATUSES:
        raise ValueError(f"status {experiment.status!r}: use one of {', '.join(STATUSES)}")
    folder = experiment_dir(project_dir, experiment.id)
    folder.mkdir(parents=True, exist_ok=True)
    artifacts = dict(experiment.artifacts)
    used: set[str] = set()
    for kind, source in (files or {}).items():
        source = Path(source)
        target = folder / (source.name if source.name not in used else f"{kind}-{source.name}")
        used.add(target.name)
        try:
            if source.resolve() != target.resolve():
                temporary = target.with_name(f".{target.name}.tmp")
                shutil.copyfile(source, temporary)
                os.replace(temporary, target)
        except OSError as error:
            raise StudioError(f"cannot copy {source} into {folder}: "
                              f"{error.strerror or error}") from error
        artifacts[kind] = target.name
    experiment.artifacts = artifacts
    write_text_atomic(folder / EXPERIMENT_FILE,
                      json.dumps(experiment.to_json(), indent=2, default=str) + "\n")
    return folder


def load_experiments_report(project_dir: str | Path) -> LoadedHistory:
    """Every readable experiment, oldest first, and a line for each one skipped."""
    root = experiments_dir(project_dir)
    found: list[Experiment] = []
    problems: list[str] = []
    if not root.is_dir():
        return LoadedHistory(found, problems)
    for folder in sorted(root.iterdir()):
        manifest = folder / EXPERIMENT_FILE
        if not folder.is_dir() or not manifest.is_file():
            continue  # killed before the manifest was written: nothing was promised
        try:
            found.append(Experiment.from_json(json.loads(manifest.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError) as error:
            problems.append(f"{manifest}: skipped ({error})")
    found.sort(key=lambda experiment: (experiment.created, experiment.id))
    return LoadedHistory(found, problems)


def load_experiments(project_dir: str | Path) -> list[Experiment]:
    """Every readable experiment, oldest first; corrupt entries are skipped (see
    :func:`load_experiments_report` for why each was)."""
    return load_experiments_report(project_dir).experiments


def artifact_path(project_dir: str | Path, experiment: Experiment, kind: str) -> Path | None:
    relative = experiment.artifacts.get(kind)
    return experiment_dir(project_dir, experiment.id) / relative if relative else None


def _latency(figures: Mapping[str, Any]) -> tuple[int, float] | None:
    """(batch, ms): batch 64, or the largest batch timed."""
    latency = figures.get("latency_ms") or {}
    if not isinstance(latency, Mapping) or not latency:
        return None
    batches = {int(key.split("_", 1)[1]): value for key, value in latency.items()
               if key.startswith("batch_") and key.split("_", 1)[1].isdigit()}
    if not batches:
        return None
    batch = LATENCY_BATCH if LATENCY_BATCH in batches else max(batches)
    return batch, float(batches[batch])


def _figures_point(figures: Mapping[str, Any]) -> dict[str, Any]:
    metric = figures.get("metric") or {}
    if not isinstance(metric, Mapping):
        metric = {}
    value, name = metric.get("value"), metric.get("name") or "accuracy"  # the oldest: unnamed
    direction = metric.get("higher_is_better")
    onnx_bytes = figures.get("onnx_bytes")
    macs = figures.get("macs")
    latency = _latency(figures)
    return {"metric": name, "value": None if value is None else float(value),
            "higher_is_better": higher_is_better(name) if direction is None else bool(direction),
            "onnx_bytes": None if onnx_bytes is None else float(onnx_bytes),
            "macs": None if macs is None else float(macs),
            "latency_ms": None if latency is None else latency[1],
            "latency_batch": None if latency is None else latency[0]}


def experiment_point(experiment: Experiment, which: str = "compressed") -> dict[str, Any]:
    """The plot's numbers for one experiment: its metric by its own name (``metric``, with
    ``value`` and ``higher_is_better``: cosine is not accuracy, and MSE is better lower),
    onnx_bytes, macs, latency_ms (batch 64, or the largest batch timed: ``latency_batch``);
    ``None`` where the
    report lacks one. ``which`` picks the run report's ``compressed`` or ``baseline``
    figures."""
    report = experiment.report or {}
    figures = report.get(which)
    return _figures_point(figures if isinstance(figures, Mapping) else {})


def pareto_front(points: Sequence[Mapping[str, Any]], x_key: str, y_key: str = "value",
                 higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats (smaller or equal x and better or equal y,
    strictly better in one), sorted by x. Points missing either value are left out."""
    sign = 1.0 if higher_is_better else -1.0
    usable = [(float(p[x_key]), sign * float(p[y_key]), i) for i, p in enumerate(points)
              if p.get(x_key) is not None and p.get(y_key) is not None]
    usable.sort(key=lambda item: (item[0], -item[1], item[2]))
    front: list[int] = []
    best_y = -float("inf")
    last: tuple[float, float] | None = None
    for x, y, index in usable:
        if y > best_y:
            front.append(index)
            best_y = y
            last = (x, y)
        elif last is not None and (x, y) == last:
            front.append(index)  # an exact duplicate of a front point is on the front too
    return front
