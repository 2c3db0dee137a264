"""The plan's estimate against the file a real run writes, for every example recipe and for the
allocator's proposals: within 2% on params, MACs and tensor bytes.

The estimate counts tensors (weights, scales, zero points, biases); the ONNX file adds its graph
(node and tensor names, a few KB), which is most of the difference on the demo's 30 KB int8
files, so the file's total is checked as a ratio of the original (within 2 points of it).
Run with ``-s`` to print the table.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from studio.core.engine.allocate import Target, allocate
from studio.core.engine.run import run_workspace
from studio.core.jobs import CancelToken
from studio.core.plan.estimate import Estimate, estimate
from studio.core.plan.recipe import Recipe, read_recipe
from studio.core.plan.stages import DataSection, ExportSection, QuantizeSection, TrainSection
from studio.core.resources import resource_path
from studio.core.workspace import open_recipe_workspace
from tests.core.test_allocate import _report

RECIPES = sorted(Path(resource_path("recipes")).glob("*.yaml"))


def _quick(recipe: Recipe) -> Recipe:
    """The same plan and quantization, without training (which changes no size) and with
    few calibration samples and one timing repeat."""
    data = recipe.section(DataSection).model_copy(update={"calibration_samples": 32})
    return recipe.model_copy(update={
        "train": TrainSection(epochs=0), "distill": None, "data": data,
        "export": ExportSection(latency_repeats=1)})


def _measure(recipe: Recipe, base: Path, out: Path) -> tuple[Estimate, dict[str, int]]:
    workspace = open_recipe_workspace(recipe, base)
    workspace.apply_recipe_plan(recipe)
    predicted = estimate(workspace.tree, workspace.plan.resolve(workspace.tree),
                         recipe.section(QuantizeSection))
    for _ in run_workspace(workspace, recipe, out, CancelToken(), base_dir=base):
        pass
    report = json.loads((out / "report.json").read_text())
    model = onnx.load(str(out / "model.onnx"))
    measured = {
        "params": report["compressed"]["params"], "macs": report["compressed"]["macs"],
        "tensor_bytes": sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer),
        "file_bytes": report["compressed"]["onnx_bytes"],
        "baseline_file_bytes": report["baseline"]["onnx_bytes"]}
    return predicted, measured


def _check(name: str, predicted: Estimate, measured: dict[str, int]) -> None:
    after = predicted.after
    pairs = {"params": (after.params, measured["params"]), "macs": (after.macs, measured["macs"]),
             "tensor bytes": (after.nbytes, measured["tensor_bytes"])}
    file_ratio = measured["file_bytes"] / measured["baseline_file_bytes"]
    print(f"| {name} | " + " | ".join(f"{e:,} / {m:,} ({e / m - 1:+.1%})"
                                      for e, m in pairs.values())
          + f" | {predicted.ratio('nbytes'):.3f}x / {file_ratio:.3f}x |")
    for label, (estimated, real) in pairs.items():
        assert estimated == pytest.approx(real, rel=0.02), label
    assert predicted.ratio("nbytes") == pytest.approx(file_ratio, abs=0.02)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_example_recipe_estimate_matches_the_file(path: Path, tmp_path: Path) -> None:
    predicted, measured = _measure(_quick(read_recipe(path)), path.parent, tmp_path)
    _check(path.stem, predicted, measured)


@pytest.mark.parametrize("target", [Target("size", 0.3), Target("macs", 0.8)],
                         ids=["size-0.3", "macs-0.8"])
def test_allocator_proposal_estimate_matches_the_file(target: Target, tmp_path: Path) -> None:
    """The greedy's proposal (from a synthetic sweep: int4/int2 bits, coupled channel cuts)
    is what the engine then makes; its estimate is the allocator's own figure."""
    base = read_recipe(RECIPES[0])
    workspace = open_recipe_workspace(base, RECIPES[0].parent)
    granularity = "channels" if target.kind == "macs" else "unstructured"
    result = allocate(workspace.tree, _report(granularity), target)
    recipe = _quick(Recipe.build(result.plan, base.model, stages={"data": base.data}))
    predicted, measured = _measure(recipe, RECIPES[0].parent, tmp_path)
    assert predicted == result.estimate
    _check(f"allocate {target.kind} {target.value}", predicted, measured)
