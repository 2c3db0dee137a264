"""What every benchmark records and writes the same way."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from studio.core.engine.run import run_workspace
from studio.core.jobs import CancelToken, Log, Result
from studio.core.plan import LayerSpec
from studio.core.plan.recipe import Recipe
from studio.core.workspace import open_workspace


def machine_info(**versions: str) -> dict[str, Any]:
    """Enough to tell whether two runs can be compared; ``versions`` adds library versions."""
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        **versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def write_json(path: Path, figures: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def run_plan(model: str | Path, plan: dict[str, LayerSpec], stages: dict[str, Any], out: Path,
             base: Path | None = None) -> dict[str, Any]:
    """One engine run on a freshly opened model file or folder, its log printed; returns its
    report."""
    workspace = open_workspace(str(model))
    for name, spec in plan.items():
        workspace.plan.set_spec(name, spec)
    recipe = Recipe.model_validate({"schema_version": 1, **stages})
    report: dict[str, Any] = {}
    for event in run_workspace(workspace, recipe, out, CancelToken(), base_dir=base):
        if isinstance(event, Log):
            print(f"  {event.message}", flush=True)
        elif isinstance(event, Result):
            report = event.report
    return report
