"""The result of a sensitivity sweep, typed: what the sweep's ``Result`` event carries (as JSON,
across the process boundary), what the project keeps in ``sensitivity.json`` and what the
heatmap, the layer tree and allocation read.

Written as JSON with a ``schema_version``; :meth:`SensitivityReport.from_json` also reads the
sweeps written before there was one (version 0: the same keys without ``schema_version``), so
old projects keep their sweep. The metric keeps its own name and direction: a drop is in units
of that metric, positive means worse whichever way it points.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from studio.core.reports.run_report import MetricValue

SCHEMA_VERSION = 1
KIND = "sensitivity"


@dataclass(frozen=True)
class SweepTable:
    """One sweep: its levels (sparsity fractions or bit-width names) and, per swept layer in
    the report's order, the drop at each level (``None`` where the cell could not be made)."""

    levels: list[Any]
    drop: list[list[float | None]]

    def rows(self, layers: list[str]) -> dict[str, list[float | None]]:
        """Drops by layer name."""
        return dict(zip(layers, self.drop, strict=True))

    def to_json(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "drop": [list(row) for row in self.drop]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, layers: list[str]) -> SweepTable:
        """A sweep over ``layers``; ``ValueError`` when its drops do not fill layers × levels
        (a sweep that was not made, absent or without levels, has an empty row per layer)."""
        levels = list((data or {}).get("levels") or [])
        if not levels:
            return cls([], [[] for _ in layers])
        drop = [[None if cell is None else float(cell) for cell in row]
                for row in (data or {}).get("drop") or []]
        if len(drop) != len(layers) or any(len(row) != len(levels) for row in drop):
            raise ValueError(f"the drops do not fill {len(layers)} layers × {len(levels)} "
                             "levels")
        return cls(levels, drop)


@dataclass
class SensitivityReport:
    """Per-layer drops of one sweep over ``layers``; ``groups`` maps each layer to the
    dependency group cut with it, ``skipped`` a layer to why its channel cut was not made."""

    model: str
    baseline: MetricValue
    """The unchanged model's metric on the ``subset`` samples: its name, value and direction."""
    subset: int
    granularity: str
    device: str
    layers: list[str]
    sparsity: SweepTable
    bits: SweepTable
    groups: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    evaluations: int = 0
    seconds_per_eval: float = 0.0
    elapsed_s: float = 0.0
    schema_version: int = SCHEMA_VERSION

    @property
    def metric(self) -> str:
        return self.baseline.name

    def sweep(self, name: str) -> SweepTable:
        """The ``"sparsity"`` or ``"bits"`` sweep."""
        if name not in ("sparsity", "bits"):
            raise ValueError(f"unknown sweep {name!r}; choose sparsity or bits")
        table: SweepTable = getattr(self, name)
        return table

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "kind": KIND, "model": self.model,
                "metric": self.baseline.name,
                "higher_is_better": self.baseline.higher_is_better,
                "baseline": self.baseline.value, "subset": self.subset,
                "granularity": self.granularity, "device": self.device,
                "layers": list(self.layers), "sparsity": self.sparsity.to_json(),
                "bits": self.bits.to_json(), "groups": self.groups, "skipped": self.skipped,
                "evaluations": self.evaluations, "seconds_per_eval": self.seconds_per_eval,
                "elapsed_s": self.elapsed_s}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SensitivityReport:
        """A sweep of any version so far; ``ValueError`` when it is not a sensitivity report."""
        if not isinstance(data, Mapping):
            raise ValueError("a sensitivity report is a JSON object")
        if data.get("kind") != KIND:
            raise ValueError(f"not a sensitivity report (kind: {data.get('kind')!r})")
        version = int(data.get("schema_version", 0))
        if version > SCHEMA_VERSION:
            raise ValueError(f"sensitivity schema_version {version} is newer than this studio "
                             f"reads ({SCHEMA_VERSION})")
        try:
            layers = [str(name) for name in data["layers"]]
            return cls(
                model=str(data.get("model", "")),
                baseline=MetricValue.from_json({
                    "name": data.get("metric", "accuracy"), "value": data["baseline"],
                    "higher_is_better": data.get("higher_is_better")}),
                subset=int(data.get("subset", 0)),
                granularity=str(data.get("granularity", "unstructured")),
                device=str(data.get("device", "")), layers=layers,
                sparsity=SweepTable.from_json(data.get("sparsity"), layers),
                bits=SweepTable.from_json(data.get("bits"), layers),
                groups={str(k): [str(m) for m in v] for k, v in
                        (data.get("groups") or {}).items()},
                skipped={str(k): str(v) for k, v in (data.get("skipped") or {}).items()},
                evaluations=int(data.get("evaluations", 0)),
                seconds_per_eval=float(data.get("seconds_per_eval", 0.0)),
                elapsed_s=float(data.get("elapsed_s", 0.0)), schema_version=SCHEMA_VERSION)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a sensitivity report ({type(error).__name__}: "
                             f"{error})") from error
