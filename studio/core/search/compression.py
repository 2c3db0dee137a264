"""The compression search's trial function, at two fidelities, over the run pipeline's own
steps.

Proxy (zero-shot, about a second on the demo): the pipeline's Prune step cuts a copy of the
model by the trial's plan, its BatchNorm re-estimation step runs on a few hundred training
samples, integer weights are rounded as the sensitivity sweep rounds them, and the copy is
scored in torch on the validation split. Its costs are the plan's estimate with weights counted
as the exported file stores them (int4/int2 convolutions are stored as int8 by onnxruntime, so
a search on nominal bits would favour them dishonestly); its latency is the MACs ratio.

Full: the whole pipeline (``run_recipe``: recovery epochs, export, ORT quantization, timing)
on the trial's recipe, scored on the same validation split; its costs are the exported file's
real bytes and its measured latency.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from optuna.distributions import BaseDistribution

from studio.core.data.metrics import drop, higher_is_better
from studio.core.data.sources import load_task
from studio.core.data.split import metric_for_output
from studio.core.data.task import TaskData
from studio.core.engine.run import run_recipe
from studio.core.engine.sensitivity import fake_quantize_weight
from studio.core.errors import StudioError
from studio.core.export.measure import torch_outputs
from studio.core.jobs import CancelToken, Result
from studio.core.jobs.events import drain
from studio.core.methods.pruning import dependency_groups
from studio.core.methods.pruning.masks import layer_weight
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.pipeline import check_recipe_fits
from studio.core.pipeline.steps.bn_recalibration import BnRecalibration
from studio.core.pipeline.steps.prune import Prune
from studio.core.pipeline.torch_backend import TorchBackend
from studio.core.plan.estimate import estimate
from studio.core.plan.ort_rules import CONV_OPS, resolved_by_name
from studio.core.plan.plan import Plan
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import DataSection, PruneSection, QuantizeSection, TrainSection
from studio.core.search.problem import TrialOutcome, TrialRequest
from studio.core.search.settings import SearchSettings
from studio.core.search.space import CompressionSpace, searched_layers, unit_key
from studio.core.train.loop import evaluate
from studio.core.workspace import Workspace, open_recipe_workspace

LATENCY_KEY = "batch_64"


@dataclass
class _Prepared:
    """What a worker builds once per process for a problem: the open model, the validation
    task and the baseline's score on it."""

    workspace: Workspace
    recipe: Recipe
    task: TaskData
    baseline: float
    reference: torch.Tensor | None


_PREPARED: dict[str, _Prepared] = {}
"""Problem key -> its prepared state in this process (a worker keeps it between trials)."""


class CompressionProblem:
    """Search a recipe's plan. Built in the driver (:meth:`create`), evaluated anywhere."""

    def __init__(self, recipe: dict[str, Any], base_dir: str | None, trust: bool,
                 settings: SearchSettings, layers: list[str], groups: dict[str, list[str]],
                 source: str = "recipe", conv_layers: list[str] | None = None,
                 macs: dict[str, int] | None = None) -> None:
        self.recipe_json, self.base_dir, self.trust = recipe, base_dir, trust
        self.settings, self.layers, self.groups, self.source = settings, layers, groups, source
        self.conv_layers = conv_layers or []
        """Searched layers that are convolutions (their sub-8-bit weights are stored as int8)."""
        self.macs = macs or {}
        """MACs of each searched layer in the original model (for :meth:`work`)."""
        self.objectives = ([] if settings.single_objective else ["drop_pt"]) + list(
            settings.costs)
        self.key = f"{id(self)}-{time.time_ns()}"

    @classmethod
    def create(cls, recipe: Recipe, base_dir: Path | None, trust: bool,
               settings: SearchSettings, source: str = "recipe") -> CompressionProblem:
        """Open the model once here to learn its layers and coupled groups, and refuse a
        recipe the search cannot run before any trial starts."""
        workspace = open_recipe_workspace(recipe, base_dir, trust, source)
        if not workspace.loaded.capabilities.can_train or workspace.example is None:
            raise StudioError(f"{source}: the compression search needs a torch model with an "
                              "example input (add example_input: {shape: [...]})")
        check_recipe_fits(workspace, recipe, source)
        layers = searched_layers(workspace.tree, settings.layers)
        if settings.layers is None:  # what the recipe excludes stays out of the space too
            resolved = resolved_by_name(workspace.tree, recipe.to_plan())
            layers = [name for name in layers if not resolved[name].exclude]
        groups = {name: [name] for name in layers}
        if "channels" in settings.granularities:
            coupled = dependency_groups(copy.deepcopy(workspace.loaded.module).eval(),
                                        workspace.example.make_tensor())
            groups = {name: list(coupled.get(name, [name])) for name in layers}
        nodes = [node for node in workspace.tree.nodes if node.name in layers]
        return cls(recipe.model_dump(mode="json", exclude_none=True),
                   None if base_dir is None else str(base_dir), trust, settings, layers,
                   groups, source, [node.name for node in nodes if node.op_type in CONV_OPS],
                   {node.name: node.macs for node in nodes})

    @property
    def space(self) -> CompressionSpace:
        return CompressionSpace(self.settings, self.layers, self.groups,
                                Recipe.model_validate(self.recipe_json).to_plan(),
                                self.conv_layers)

    def distributions(self) -> dict[str, BaseDistribution]:
        return self.space.distributions()

    def seed_params(self, plans: Sequence[Plan]) -> list[dict[str, Any]]:
        """Each plan (a recipe's, an allocator's proposal) as the nearest parameters of this
        search's space, to seed a new study with (``run_search(seeds=...)``)."""
        recipe = Recipe.model_validate(self.recipe_json)
        base = None if self.base_dir is None else Path(self.base_dir)
        tree = open_recipe_workspace(recipe, base, self.trust, self.source).tree
        return [self.space.params_of(resolved_by_name(tree, plan)) for plan in plans]

    def work(self, params: Mapping[str, Any]) -> float:
        """The share of the searched layers' MACs a channel cut keeps (a trial's BatchNorm
        re-estimation, scoring and recovery all run through them; unstructured zeros run)."""
        kept = 0.0
        for unit in self.space.units:
            key = unit_key(unit)
            cut = params.get(f"granularity/{key}", self.settings.granularities[0]) == "channels"
            share = 1.0 - float(params.get(f"sparsity/{key}", 0.0)) if cut else 1.0
            kept += share * sum(self.macs.get(name, 0) for name in unit)
        return kept / max(1, sum(self.macs.values()))

    def describe(self, params: Mapping[str, Any]) -> str:
        parts = []
        for name, value in params.items():
            kind, layer = name.split("/", 1)
            if kind == "sparsity" and value:
                granularity = params.get(f"granularity/{layer}", self.settings.granularities[0])
                parts.append(f"{layer} {value:g} {granularity}")
            elif kind == "bits" and value != "fp32":
                parts.append(f"{layer} {value}")
        return ", ".join(parts) or "nothing compressed"

    def trial_recipe(self, params: Mapping[str, Any]) -> Recipe:
        """The recipe a full-fidelity trial runs: the user's, with the trial's plan, scored on
        the validation split, recovering for ``full_epochs``."""
        recipe = Recipe.model_validate(self.recipe_json)
        plan = self.space.plan(params)
        data = recipe.section(DataSection).model_copy(
            update={"validation_samples": self.settings.validation_samples})
        train = recipe.section(TrainSection).model_copy(
            update={"epochs": self.settings.full_epochs})
        built = Recipe.build(plan, recipe.model, None, recipe.stages())
        return built.model_copy(update={"example_input": recipe.example_input, "data": data,
                                        "train": train,
                                        "distill": recipe.distill if train.epochs else None})

    def prepare(self) -> None:
        self._prepared()

    def evaluate(self, request: TrialRequest) -> TrialOutcome:
        return run_trial(self.settings, request, self._proxy, self._full)

    def _values(self, figures: dict[str, float]) -> list[float]:
        return [figures[name] for name in self.objectives]

    def _prepared(self) -> _Prepared:
        prepared = _PREPARED.get(self.key)
        if prepared is None:
            recipe = Recipe.model_validate(self.recipe_json)
            base = None if self.base_dir is None else Path(self.base_dir)
            workspace, task, baseline, keep = open_validation(recipe, base, self.trust,
                                                              self.settings, self.source)
            prepared = _Prepared(workspace, recipe.model_copy(update={
                "prune": recipe.section(PruneSection).model_copy(
                    update={"bn_recalibration": True})}), task, baseline, keep)
            _PREPARED.clear()  # one problem per worker at a time
            _PREPARED[self.key] = prepared
        return prepared

    def _proxy(self, request: TrialRequest) -> TrialOutcome:
        prepared = self._prepared()
        plan = self.space.plan(request.params)
        workspace = dataclasses.replace(prepared.workspace, plan=plan)
        with tempfile.TemporaryDirectory(prefix="studio-proxy-") as scratch:
            context = RunContext(workspace, prepared.recipe,
                                 TorchBackend(prepared.recipe, None, False), Path(scratch),
                                 Path(scratch) / "model.onnx", CancelToken(), self.source)
            module = workspace.loaded.module
            assert module is not None
            context.model = copy.deepcopy(module).eval()
            context.data = prepared.task
            for step in (Prune(), BnRecalibration()):
                if step.applies(context):
                    drain(step.run(context))
        model = context.model
        resolved = plan.resolve(workspace.tree)
        with torch.no_grad():
            for node, spec in zip(workspace.tree.nodes, resolved, strict=True):
                if node.prunable and not spec.exclude and spec.weight_bits not in (None,
                                                                                   "fp32"):
                    weight = layer_weight(model, node.name)
                    weight.copy_(fake_quantize_weight(weight, spec.weight_bits))
        task = prepared.task
        value = evaluate(model, task.test, metric=task.metric, reference=prepared.reference)
        sizes = estimate(workspace.tree, resolved, prepared.recipe.section(QuantizeSection))
        figures = {"metric": value, "baseline": prepared.baseline,
                   "drop_pt": round(100.0 * drop(task.metric, prepared.baseline, value), 6),
                   "bytes": sizes.ratio("nbytes"), "macs": sizes.ratio("macs"),
                   "latency": sizes.ratio("macs")}
        return TrialOutcome(self._values(figures), figures, "proxy")

    def _full(self, request: TrialRequest) -> TrialOutcome:
        if request.out_dir is None:
            raise StudioError("a full-fidelity trial needs a folder for its files")
        recipe = self.trial_recipe(request.params)
        base = None if self.base_dir is None else Path(self.base_dir)
        report: dict[str, Any] | None = None
        for event in run_recipe(recipe, base, Path(request.out_dir), CancelToken(), self.trust,
                                source=f"{self.source} (trial {request.number})"):
            if isinstance(event, Result):
                report = event.report
        assert report is not None
        figures = full_figures(report)
        return TrialOutcome(self._values(figures), figures, "full",
                            recipe=recipe.model_dump(mode="json", exclude_none=True),
                            report=report, files={"onnx": report["paths"]["model"],
                                                  "report": report["paths"]["report"]})


def open_validation(recipe: Recipe, base: Path | None, trust: bool, settings: SearchSettings,
                    source: str) -> tuple[Workspace, TaskData, float, torch.Tensor | None]:
    """What every trial of a search scores against: the open model, the task with its
    validation split carved from the training data (``task.test``; the test split is never
    read), the original model's score there, and its outputs where the metric compares with
    them (None for accuracy)."""
    workspace = open_recipe_workspace(recipe, base, trust, source)
    section = recipe.section(DataSection).model_copy(update={
        "validation_samples": settings.validation_samples,
        "calibration_samples": settings.proxy_samples})
    task = load_task(section, base, trust)
    module = workspace.loaded.module
    assert module is not None
    reference = torch_outputs(module, task.test.tensors[0])
    task = metric_for_output(section, task, "output", ("N", *reference.shape[1:]), source)
    keep = None if task.metric == "accuracy" else reference
    baseline = evaluate(module, task.test, metric=task.metric, reference=keep)
    return workspace, task, baseline, keep


def run_trial(settings: SearchSettings, request: TrialRequest,
              proxy: Callable[[TrialRequest], TrialOutcome],
              full: Callable[[TrialRequest], TrialOutcome]) -> TrialOutcome:
    """One trial at its fidelity, on one thread and seeded by its number (the same float sums
    in any worker: bit-identical trials), timed, with its constraints' excess."""
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(settings.seed + request.number)
        outcome = (full if request.fidelity == "full" else proxy)(request)
    finally:
        torch.set_num_threads(threads)
    outcome.seconds = round(time.perf_counter() - started, 3)
    outcome.constraints = constraint_excess(settings, outcome.figures)
    return outcome


def constraint_excess(settings: SearchSettings, figures: Mapping[str, float]
                      ) -> dict[str, float]:
    """Each constraint's excess by the figure it limits; 0 or less is feasible."""
    found = {}
    if settings.max_drop_pt is not None:
        found["drop_pt"] = figures["drop_pt"] - settings.max_drop_pt
    if settings.max_cost_ratio is not None:
        cost = settings.costs[0]
        found[cost] = figures[cost] - settings.max_cost_ratio
    return found


def full_figures(report: Mapping[str, Any]) -> dict[str, float]:
    """A run report's figures as the search reads them: the metric, its drop in points and
    each cost as a ratio of the compressed file to the baseline file."""
    base, comp = report["baseline"], report["compressed"]
    metric = base["metric"]["name"]
    latency_key = LATENCY_KEY if LATENCY_KEY in base["latency_ms"] else max(base["latency_ms"])
    value, baseline = comp["metric"]["value"], base["metric"]["value"]
    return {"metric": value, "baseline": baseline,
            "drop_pt": round(100.0 * drop(metric, baseline, value), 6),
            "bytes": comp["onnx_bytes"] / base["onnx_bytes"],
            "macs": comp["macs"] / base["macs"] if base["macs"] else 1.0,
            "latency": comp["latency_ms"][latency_key] / base["latency_ms"][latency_key],
            "higher_is_better": float(higher_is_better(metric))}
