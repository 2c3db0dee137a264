"""Per-layer sensitivity: how much of the task's metric each layer loses when it alone is pruned
or quantized.

For every prunable layer and level the job changes that one layer (on a private copy of the
model), evaluates a subset of the test split and puts the weights back, so the sweep costs one
evaluation per cell and no retraining. Two sweeps are made: sparsity levels and weight bit-widths.
Structured (``channels``) sweeps cut a whole dependency group at once (``prune_channels`` on a
deep copy), because cutting one of two coupled layers is not a model that runs; every layer of
the group is then reported with the group's row, so a coupled layer is never shown as harmless.

The metric is the task's: accuracy with labels, or agreement (cosine, top-1 agreement, MSE) with
the unchanged model's outputs on the same samples, so a sweep needs no labels. Drops are
``baseline - metric`` (``metric - baseline`` for MSE) in units of the metric (0.01 = one percent
of accuracy); positive means worse. Cells streamed as :class:`Metric` events are named by
:func:`cell_name`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from studio.core.data.metrics import drop
from studio.core.data.sources import load_task
from studio.core.data.split import metric_for_output
from studio.core.data.task import TaskData, demo_task
from studio.core.engine.data_fit import check_one_input
from studio.core.errors import StudioError
from studio.core.export.measure import torch_outputs
from studio.core.jobs import CancelToken, Event, Log, Metric, Progress, Result
from studio.core.methods.pruning import dependency_groups, prune_channels
from studio.core.methods.pruning.importance import magnitude_scores
from studio.core.methods.pruning.masks import layer_weight
from studio.core.methods.pruning.unstructured import layer_masks
from studio.core.methods.quantization.grid import fake_quantize_weight
from studio.core.plan.recipe import Recipe
from studio.core.plan.spec import BITS_PER_ELEMENT
from studio.core.plan.stages import DataSection
from studio.core.reports.run_report import MetricValue
from studio.core.reports.sensitivity_report import SensitivityReport, SweepTable
from studio.core.train.loop import evaluate, resolve_device
from studio.core.workspace import Workspace, open_recipe_workspace

STAGE = "sensitivity"
DEFAULT_SPARSITY = (0.25, 0.5, 0.75)
DEFAULT_BITS = ("int8", "int4", "int2")
GRANULARITIES = ("unstructured", "channels")


def cell_name(sweep: str, level: float | str, layer: str) -> str:
    """Name of a cell's Metric event: ``sparsity:0.5:res.conv2`` or ``bits:int4:stem.0``."""
    return f"{sweep}:{level}:{layer}"


def parse_cell_name(name: str) -> tuple[str, str, str]:
    """Inverse of :func:`cell_name`: (sweep, level as text, layer)."""
    sweep, level, layer = name.split(":", 2)
    return sweep, level, layer


def evaluation_subset(subset: int, task: TaskData | None = None) -> TensorDataset:
    """The first ``subset`` samples of the task's test split (the same ones on every run);
    the demo digits when no task is given."""
    tensors = (task or demo_task()).test.tensors
    return TensorDataset(*(tensor[:subset] for tensor in tensors))


def sweep_layers(workspace: Workspace, layers: Sequence[str] | None = None) -> list[str]:
    """The layers a sweep covers: the tree's prunable layers, or the ``layers`` asked for."""
    prunable = [node.name for node in workspace.tree.nodes if node.prunable]
    if layers is None:
        return prunable
    unknown = [name for name in layers if name not in prunable]
    if unknown:
        raise StudioError(f"sensitivity: {', '.join(map(repr, unknown))} is not a prunable "
                          "layer of the model (a Conv or Linear with a weight)")
    return list(layers)


def _check_levels(sparsity_levels: Sequence[float], bit_levels: Sequence[str],
                  granularity: str, subset: int) -> None:
    if granularity not in GRANULARITIES:
        raise StudioError(f"sensitivity: granularity {granularity!r}; use one of "
                          f"{', '.join(GRANULARITIES)}")
    bad = [level for level in sparsity_levels if not 0.0 < float(level) < 1.0]
    if bad:
        raise StudioError(f"sensitivity: sparsity levels must lie between 0 and 1, got {bad}")
    unknown = [bits for bits in bit_levels if bits not in BITS_PER_ELEMENT]
    if unknown:
        raise StudioError(f"sensitivity: unknown bit levels {unknown}; use int8, int4, int2, "
                          "fp16 or bf16")
    if subset < 1:
        raise StudioError("sensitivity: the subset must hold at least one sample")


def sensitivity_job(recipe: Recipe, base_dir: Path | None, token: CancelToken,
                    sparsity_levels: Sequence[float] = DEFAULT_SPARSITY,
                    bit_levels: Sequence[str] = DEFAULT_BITS,
                    granularity: str = "unstructured", subset: int = 500,
                    layers: Sequence[str] | None = None, device: str | None = None,
                    trust: bool = False, trust_data: bool | None = None,
                    architecture: str | None = None) -> Iterator[Event]:
    """Open the model and the data the recipe names, then :func:`sensitivity_workspace` (the
    child-process entry calls this with the spec's ``options``). ``trust`` and ``trust_data``
    as in :func:`studio.core.engine.run.run_recipe`."""
    if recipe.model is None:
        raise StudioError("sensitivity: the recipe names no model (add model: {path: ...})")
    workspace = open_recipe_workspace(recipe, base_dir, trust, architecture=architecture)
    task = load_task(recipe.data or DataSection(), base_dir,
                     trust if trust_data is None else trust_data, workspace.loaded.path)
    yield from sensitivity_workspace(workspace, token, sparsity_levels, bit_levels, granularity,
                                     subset, layers, device, task, recipe.data or DataSection())


@dataclass
class _Sweep:
    """Shared state of one run: the private model copy, the data and the counters."""

    model: nn.Module
    data: TensorDataset
    token: CancelToken
    device: str
    baseline: float
    total: int
    metric: str = "accuracy"
    reference: Tensor | None = None
    """The unchanged model's outputs on ``data``, for agreement metrics."""
    done: int = 0

    def evaluate(self, model: nn.Module | None = None) -> float:
        target = model if model is not None else self.model
        value = evaluate(target, self.data, self.token, self.device, metric=self.metric,
                         reference=self.reference)
        self.done += 1
        return value


def sensitivity_workspace(workspace: Workspace, token: CancelToken,
                          sparsity_levels: Sequence[float] = DEFAULT_SPARSITY,
                          bit_levels: Sequence[str] = DEFAULT_BITS,
                          granularity: str = "unstructured", subset: int = 500,
                          layers: Sequence[str] | None = None,
                          device: str | None = None,
                          task: TaskData | None = None,
                          section: DataSection | None = None) -> Iterator[Event]:
    """The sweep on an open model, scored on ``task``'s test split with its metric (the demo
    digits when None), which ``section`` (the data section ``task`` came from; its metric taken
    as asked for when None) settles once the original's outputs are known, as a run does; the
    workspace's model is never changed (the job works on a copy and restores every weight it
    touched before the next cell). Last event: Result, carrying a :class:`SensitivityReport` as
    JSON."""
    started = time.perf_counter()
    if not workspace.loaded.capabilities.can_sweep:
        raise StudioError("sensitivity: ONNX-only models are not supported yet; open the torch "
                          "model")
    if task is not None:
        check_one_input(task)
    if workspace.example is None and granularity == "channels":
        raise StudioError("sensitivity: channel sweeps trace the model; add example_input to "
                          "the recipe")
    sparsity_levels = [float(level) for level in sparsity_levels]
    bit_levels = list(bit_levels)
    _check_levels(sparsity_levels, bit_levels, granularity, subset)
    device = device or "cpu"
    target = resolve_device(device)
    names = sweep_layers(workspace, layers)
    data = evaluation_subset(subset, task)
    metric = task.metric if task is not None else "accuracy"
    model = copy.deepcopy(workspace.loaded.module).to(target).eval()
    reference = None if metric == "accuracy" else torch_outputs(model, data.tensors[0])
    if task is not None and reference is not None:
        task = metric_for_output(section or DataSection(metric=task.metric), task, "output",
                                 ("N", *reference.shape[1:]), "sensitivity")
        metric = task.metric
    groups = {name: [name] for name in names}
    example = None
    if granularity == "channels":
        assert workspace.example is not None
        example = workspace.example.make_tensor().to(target)
        coupled = dependency_groups(model, example)
        groups = {name: list(coupled.get(name, [name])) for name in names}
    units = _units(names, groups) if granularity == "channels" else [[name] for name in names]
    total = 1 + len(units) * len(sparsity_levels) + len(names) * len(bit_levels)
    yield Log(f"Sensitivity: {len(names)} layers × {len(sparsity_levels)} sparsity levels "
              f"({granularity}) and {len(bit_levels)} bit-widths on {len(data)} test samples, "
              f"metric {metric}" + (f" ({task.metric_reason})" if task and task.metric_reason
                                    else ""))
    sweep = _Sweep(model, data, token, str(target), 0.0, total, metric, reference)
    sweep.baseline = sweep.evaluate()
    yield Metric(STAGE, "baseline", sweep.baseline, 0)
    yield Progress(STAGE, sweep.done, total)

    sparsity: dict[str, list[float | None]] = {name: [None] * len(sparsity_levels)
                                               for name in names}
    skipped: dict[str, str] = {}
    for unit in units:
        for index, level in enumerate(sparsity_levels):
            if granularity == "channels":
                value, reason = _channels_cell(sweep, groups[unit[0]], level, example)
                if reason is not None:
                    skipped.update(dict.fromkeys(unit, reason))
            else:
                value = _unstructured_cell(sweep, unit[0], level)
            lost = None if value is None else round(drop(metric, sweep.baseline, value), 6)
            for name in unit:
                sparsity[name][index] = lost
                if lost is not None:
                    yield Metric(STAGE, cell_name("sparsity", level, name), lost, sweep.done)
            yield Progress(STAGE, sweep.done, total)

    bits: dict[str, list[float | None]] = {}
    for name in names:
        bits[name] = []
        for level in bit_levels:
            lost = round(drop(metric, sweep.baseline, _bits_cell(sweep, name, level)), 6)
            bits[name].append(lost)
            yield Metric(STAGE, cell_name("bits", level, name), lost, sweep.done)
            yield Progress(STAGE, sweep.done, total)

    elapsed = time.perf_counter() - started
    report = SensitivityReport(
        model=workspace.tree.model_name, baseline=MetricValue.of(metric, sweep.baseline),
        subset=len(data), granularity=granularity, device=str(target), layers=names,
        sparsity=SweepTable(sparsity_levels, [sparsity[name] for name in names]),
        bits=SweepTable(bit_levels, [bits[name] for name in names]), groups=groups,
        skipped=skipped, evaluations=sweep.done,
        seconds_per_eval=round(elapsed / max(1, sweep.done), 4), elapsed_s=round(elapsed, 2))
    yield Result(report.to_json())  # JSON: the event crosses the process boundary


def _units(names: list[str], groups: dict[str, list[str]]) -> list[list[str]]:
    """The swept layers gathered by dependency group, each group once (evaluated once)."""
    units: list[list[str]] = []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            continue
        unit = [member for member in groups[name] if member in names] or [name]
        seen.update(unit)
        units.append(unit)
    return units


@torch.no_grad()
def _unstructured_cell(sweep: _Sweep, name: str, level: float) -> float:
    """Zero the ``level`` smallest-magnitude weights of one layer, evaluate, restore."""
    weight = layer_weight(sweep.model, name)
    saved = weight.detach().clone()
    masks = layer_masks(magnitude_scores(sweep.model, [name]), {name: level})
    try:
        masks.apply(sweep.model)
        return sweep.evaluate()
    finally:
        weight.copy_(saved)


@torch.no_grad()
def _bits_cell(sweep: _Sweep, name: str, bits: str) -> float:
    """Round one layer's weight to ``bits`` (weights only), evaluate, restore."""
    weight = layer_weight(sweep.model, name)
    saved = weight.detach().clone()
    try:
        weight.copy_(fake_quantize_weight(saved, bits))
        return sweep.evaluate()
    finally:
        weight.copy_(saved)


def _channels_cell(sweep: _Sweep, group: list[str], level: float,
                   example: Tensor | None) -> tuple[float | None, str | None]:
    """Cut ``level`` of the group's output channels on a deep copy and evaluate it; (None,
    reason) when the group cannot be cut (it feeds the output, or the level rounds to none)."""
    sweep.token.check()
    model = copy.deepcopy(sweep.model)
    report = prune_channels(model, example, dict.fromkeys(group, level))
    if not report.groups:
        sweep.done += 1  # counted, so progress still reaches its total
        reason = report.skipped[0]["reason"] if report.skipped else "nothing to cut"
        return None, reason
    return sweep.evaluate(model.eval()), None


@dataclass(frozen=True)
class SweepSize:
    """How big a sweep is: layers, levels per layer (both sweeps together) and samples."""

    n_layers: int
    n_levels: int
    subset: int

    @property
    def evaluations(self) -> int:
        return 1 + self.n_layers * self.n_levels


def sweep_size(workspace: Workspace, sparsity_levels: Sequence[float] = DEFAULT_SPARSITY,
               bit_levels: Sequence[str] = DEFAULT_BITS, subset: int = 500,
               layers: Sequence[str] | None = None) -> SweepSize:
    """The size of the sweep the job would run (channel sweeps, which evaluate each coupled
    group once, may run fewer evaluations than this counts)."""
    return SweepSize(len(sweep_layers(workspace, layers)),
                     len(sparsity_levels) + len(bit_levels), subset)


def estimate_runtime_s(sweep: Workspace | SweepSize | tuple[int, int, int],
                       seconds_per_eval: float, measured_subset: int | None = None) -> float:
    """Seconds the sweep should take: evaluations × ``seconds_per_eval`` (from
    :func:`measure_seconds_per_eval`; scaled linearly when it was measured on
    ``measured_subset`` samples and the sweep uses another number). A workspace means the
    default sweep (all prunable layers, default levels, 500 samples)."""
    if isinstance(sweep, Workspace):
        size = sweep_size(sweep)
    elif isinstance(sweep, SweepSize):
        size = sweep
    else:
        size = SweepSize(*sweep)
    per_eval = seconds_per_eval
    if measured_subset:
        per_eval *= size.subset / measured_subset
    return size.evaluations * per_eval


def measure_seconds_per_eval(workspace: Workspace, subset: int = 500, device: str | None = None,
                             repeats: int = 2, task: TaskData | None = None) -> float:
    """Time of one evaluation on ``subset`` samples (best of ``repeats`` after a warm-up
    batch), so the GUI can show an estimate before the sweep starts. Runs on a copy."""
    if not workspace.loaded.capabilities.can_sweep:
        raise StudioError("sensitivity: ONNX-only models are not supported yet")
    target = resolve_device(device or "cpu")
    model = copy.deepcopy(workspace.loaded.module).to(target).eval()
    data = evaluation_subset(subset, task)
    with torch.no_grad():
        model(data.tensors[0][:8].to(target))
    best = math.inf
    for _ in range(max(1, repeats)):  # the forward passes are what an evaluation costs
        start = time.perf_counter()
        torch_outputs(model, data.tensors[0])
        best = min(best, time.perf_counter() - start)
    return best
