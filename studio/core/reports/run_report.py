"""The report of a run, typed: what ``report.json`` holds, the ``Result`` event carries and an
experiment keeps.

Written as JSON with a ``schema_version``; :meth:`RunReport.from_json` also reads the reports
written before there was one (version 0: no ``schema_version``, ``data`` a plain name in the
oldest, no ``agreement`` or ``source_format``), so old ``report.json`` files and project
experiments keep loading. The metric keeps its own name and direction (``higher_is_better``):
nothing downstream calls cosine or MSE "accuracy".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from studio.core.data.metrics import higher_is_better

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class MetricValue:
    name: str
    value: float
    higher_is_better: bool

    @classmethod
    def of(cls, name: str, value: float) -> MetricValue:
        return cls(name, value, higher_is_better(name))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value,
                "higher_is_better": self.higher_is_better}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MetricValue:
        name = str(data.get("name", "accuracy"))
        direction = data.get("higher_is_better")
        return cls(name, float(data["value"]),
                   higher_is_better(name) if direction is None else bool(direction))


@dataclass
class Figures:
    """One model file measured: the task's metric on the file itself (in onnxruntime), its
    agreement with the uncompressed model, sizes, MACs, parity with the model it came from and
    latency by batch (``batch_N`` -> ms, filled once both files are timed side by side)."""

    metric: MetricValue
    params: int
    nonzero_params: int
    macs: int
    onnx_bytes: int
    zip_bytes: int
    parity: dict[str, float | None]
    agreement: dict[str, float] | None = None
    outputs: dict[str, dict[str, float]] | None = None
    """Agreement of each output by name, for a file with several."""
    latency_ms: dict[str, float] = field(default_factory=dict)
    generation: dict[str, str] | None = None
    """A causal LM's greedy continuation (``prompt``, ``text``), shown beside its perplexity."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"metric": self.metric.to_json()}
        if self.agreement is not None:
            data["agreement"] = self.agreement
        if self.generation is not None:
            data["generation"] = self.generation
        if self.outputs is not None:
            data["outputs"] = self.outputs
        return data | {"params": self.params, "nonzero_params": self.nonzero_params,
                       "macs": self.macs, "onnx_bytes": self.onnx_bytes,
                       "zip_bytes": self.zip_bytes, "parity": self.parity,
                       "latency_ms": self.latency_ms}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Figures:
        return cls(metric=MetricValue.from_json(data["metric"]),
                   params=int(data["params"]), nonzero_params=int(data["nonzero_params"]),
                   macs=int(data["macs"]), onnx_bytes=int(data["onnx_bytes"]),
                   zip_bytes=int(data["zip_bytes"]), parity=dict(data.get("parity") or {}),
                   agreement=data.get("agreement"), outputs=data.get("outputs"),
                   generation=data.get("generation"),
                   latency_ms={str(k): float(v) for k, v in
                               (data.get("latency_ms") or {}).items()})


@dataclass
class RunReport:
    """What a run did and measured. ``stages`` holds each step's own report under the step's
    name, in the order the steps ran; ``notes`` are plain words for the user."""

    recipe: str
    model: str
    source_format: str
    """The backend that ran: ``torch`` or ``onnx`` (an ONNX file without its torch model)."""
    data: dict[str, Any] | str | None
    device: str
    baseline: Figures
    compressed: Figures
    stages: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    seed: int | None = None
    paths: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def metric(self) -> str:
        return self.compressed.metric.name

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema_version": self.schema_version, "recipe": self.recipe,
            "model": self.model, "source_format": self.source_format, "data": self.data,
            "device": self.device}
        if self.seed is not None:
            data["seed"] = self.seed
        return data | {"baseline": self.baseline.to_json(),
                       "compressed": self.compressed.to_json(), "stages": self.stages,
                       "notes": list(self.notes), "elapsed_s": self.elapsed_s,
                       "paths": self.paths}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunReport:
        """A report of any version so far; ``ValueError`` when it is not a run report."""
        if not isinstance(data, Mapping):
            raise ValueError("a run report is a JSON object")
        version = int(data.get("schema_version", 0))
        if version > SCHEMA_VERSION:
            raise ValueError(f"report schema_version {version} is newer than this studio "
                             f"reads ({SCHEMA_VERSION})")
        try:
            return cls(recipe=str(data.get("recipe", "")), model=str(data.get("model", "")),
                       source_format=str(data.get("source_format", "torch")),
                       data=data.get("data"), device=str(data.get("device", "")),
                       baseline=Figures.from_json(data["baseline"]),
                       compressed=Figures.from_json(data["compressed"]),
                       stages=dict(data.get("stages") or {}),
                       notes=[str(note) for note in data.get("notes") or []],
                       elapsed_s=float(data.get("elapsed_s", 0.0)), seed=data.get("seed"),
                       paths=dict(data.get("paths") or {}), schema_version=SCHEMA_VERSION)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a run report ({type(error).__name__}: {error})") from error
