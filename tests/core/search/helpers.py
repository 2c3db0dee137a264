"""A small, fast compression search on the demo: two layers, unstructured cuts and bits,
scored on 100 validation samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from studio.core.plan.recipe import Recipe
from studio.core.search.compression import CompressionProblem
from studio.core.search.problem import TrialOutcome, TrialRequest
from studio.core.search.settings import SearchSettings

RECIPE = {"schema_version": 1, "model": {"path": "demo"},
          "data": {"source": "demo", "calibration_samples": 64},
          "train": {"epochs": 0}, "export": {"latency_repeats": 2}}


def tiny_settings(**changes: Any) -> SearchSettings:
    values: dict[str, Any] = {
        "trials": 4, "population": 2, "seed": 3, "layers": ["block1.0", "res.conv1.0"],
        "granularities": ["unstructured"], "bits": ["fp32", "int8"],
        "sparsity_levels": [0.0, 0.5, 0.9], "validation_samples": 100, "proxy_samples": 64,
        "full_fidelity": False, "full_epochs": 0}
    values.update(changes)
    return SearchSettings.model_validate(values)


def tiny_problem(settings: SearchSettings, tmp: Path) -> CompressionProblem:
    return CompressionProblem.create(Recipe.model_validate(RECIPE), tmp, False, settings)


class RaisingProblem(CompressionProblem):
    """The demo search, whose trial 1 raises as a broken trial would (module level, so worker
    processes can unpickle it)."""

    def evaluate(self, request: TrialRequest) -> TrialOutcome:
        if request.number == 1:
            raise RuntimeError("this trial's plan cannot be built")
        return super().evaluate(request)


class DyingProblem(CompressionProblem):
    """The demo search, whose trial 0 kills its worker process (as the kernel's OOM killer
    would)."""

    def evaluate(self, request: TrialRequest) -> TrialOutcome:
        if request.number == 0:
            import os
            os._exit(9)
        return super().evaluate(request)
