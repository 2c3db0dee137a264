"""What the layer view draws for one weighted layer, before and after the plan is applied.

Pure numbers (numpy arrays), computed without Qt so a worker thread can make them and tests can
check them. The plan is applied to the layer's weight with the engine's own rules: magnitude
masks (``layer_masks``), N:M masks (``nm_mask``), whole output channels ranked by their norm
(the engine ranks a coupled group by the group's norm, so a coupled layer may lose other
channels), then the per-channel integer grid of the planned bits (``fake_quantize_weight``, the
sensitivity sweep's rounding).

Large layers stay quick: histograms use at most :data:`HISTOGRAM_SAMPLE` weights drawn at
random (the same ones before and after), the sparsity image is a crop of the top-left corner at
full resolution (a strided subsample would hide N:M groups), and activations are taken on a few
samples only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from studio.core.data.task import demo_task, model_inputs
from studio.core.graph.observe import observe
from studio.core.graph.tree import LayerTree
from studio.core.methods.pruning.masks import layer_weight
from studio.core.methods.pruning.nm import nm_mask
from studio.core.methods.pruning.unstructured import layer_masks
from studio.core.methods.quantization.grid import fake_quantize_weight
from studio.core.models.loaded import DEMO
from studio.core.plan.channels import kept_channels
from studio.core.plan.plan import ResolvedSpec
from studio.core.plan.spec import BITS_PER_ELEMENT, parse_nm
from studio.core.reports.sensitivity_report import SensitivityReport
from studio.core.workspace import Workspace

HISTOGRAM_SAMPLE = 1_000_000
HISTOGRAM_BINS = 121
PATTERN_CROP = (32, 64)
"""Output channels × inputs shown in the sparsity image."""


@dataclass(frozen=True)
class SensitivityCurve:
    """The sweep's metric drop for this layer at each level (``None``: not measured)."""

    sweep: str
    levels: list[float | str]
    drops: list[float | None]


@dataclass(frozen=True)
class LayerStats:
    name: str
    shape: tuple[int, ...]
    weights: int
    sampled: int
    """Weights the histograms were drawn from (all of them up to HISTOGRAM_SAMPLE)."""
    edges: np.ndarray
    before: np.ndarray
    """Histogram counts of the weight as it is, over ``edges``."""
    after: np.ndarray
    """The same after the plan: pruned weights pile up at zero, quantized ones on the grid."""
    codes: np.ndarray | None
    """Counts per integer level (-qmax..qmax) at the planned bits; None when not integer."""
    channel_min: np.ndarray
    channel_max: np.ndarray
    """Per output channel: the range per-channel quantization gives its own scale."""
    pattern: np.ndarray
    """Kept (1) / pruned (0) for the top-left crop of the (outputs × inputs) weight matrix."""
    group: int | None
    """M of an N:M plan: the width of the groups in ``pattern``."""
    bits: str | None
    sqnr_db: float | None
    """Signal to quantization noise of the pruned weight at the planned bits; None when the
    plan leaves it float; ``inf`` when rounding changes nothing."""
    sparsity_after: float
    act_min: np.ndarray | None
    act_max: np.ndarray | None
    """Per output channel, over ``act_samples`` inputs; None without samples."""
    act_samples: int
    act_source: str
    """Where the activation samples came from, in words."""
    curves: tuple[SensitivityCurve, ...]
    seconds: float


def sqnr_db(reference: Tensor, approximation: Tensor) -> float:
    """10·log10(signal power / error power); ``inf`` when the two are equal."""
    error = reference - approximation
    noise = float(torch.sum(error * error, dtype=torch.float64))
    signal = float(torch.sum(reference * reference, dtype=torch.float64))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


@torch.no_grad()
def plan_mask(weight: Tensor, spec: ResolvedSpec) -> Tensor:
    """Bool mask of the weights the plan keeps (magnitude importance, as the engine's default)."""
    scores = weight.abs()
    sparsity = spec.effective_sparsity
    if sparsity <= 0.0:
        return torch.ones_like(weight, dtype=torch.bool)
    nm = parse_nm(spec.granularity)
    if nm is not None:
        return nm_mask(scores, *nm)
    if spec.granularity == "channels":
        norms = scores.reshape(scores.shape[0], -1).pow(2).sum(1)
        keep = torch.argsort(norms, descending=True, stable=True)[
            :kept_channels(weight.shape[0], sparsity)]
        rows = torch.zeros(weight.shape[0], dtype=torch.bool)
        rows[keep] = True
        return rows.view(-1, *([1] * (weight.dim() - 1))).expand_as(weight)
    return layer_masks({"w": scores}, {"w": sparsity})["w"]


def integer_bits(spec: ResolvedSpec) -> str | None:
    """The planned integer bits (int8/int4/int2), None for float or excluded layers."""
    bits = spec.weight_bits
    return bits if not spec.exclude and bits in ("int8", "int4", "int2") else None


@torch.no_grad()
def planned_weight(weight: Tensor, spec: ResolvedSpec) -> tuple[Tensor, Tensor]:
    """(kept mask, the weight after the plan: masked, then rounded to its planned bits)."""
    mask = plan_mask(weight, spec)
    pruned = weight * mask
    if spec.exclude or spec.weight_bits in (None, "fp32"):
        return mask, pruned
    return mask, fake_quantize_weight(pruned, spec.weight_bits)


def _codes(pruned: Tensor, bits: str) -> np.ndarray:
    """How many weights land on each integer level of the per-channel grid."""
    qmax = 2 ** (BITS_PER_ELEMENT[bits] - 1) - 1
    rows = pruned.reshape(pruned.shape[0], -1)
    scale = (rows.abs().amax(1).clamp_min(1e-12) / qmax).unsqueeze(1)
    codes = (rows / scale).round().clamp(-qmax, qmax).to(torch.int64) + qmax
    return torch.bincount(codes.flatten(), minlength=2 * qmax + 1).numpy()


def _sample(flat: Tensor, limit: int, seed: int) -> Tensor | slice:
    if flat.numel() <= limit:
        return slice(None)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(flat.numel(), (limit,), generator=generator)


@torch.no_grad()
def activation_ranges(model: nn.Module, name: str, inputs: Tensor | Mapping[str, Tensor]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel (dim 1 of a conv's output, the last of others) min and max of the
    layer's outputs over ``inputs`` (a batch; the model runs once, in eval mode)."""
    layer = model.get_submodule(name)
    seen: list[Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, Tensor):
            seen.append(output.detach().float())

    observe(model, inputs, [(layer, keep)])
    if not seen:
        raise ValueError(f"{name} gave no tensor output on the samples")
    output = seen[0]
    axis = 1 if isinstance(layer, nn.modules.conv._ConvNd) and output.dim() > 2 else -1
    channels = output.movedim(axis, 0).reshape(output.shape[axis], -1)
    return channels.amin(1).numpy(), channels.amax(1).numpy()


def sensitivity_curves(report: SensitivityReport | None, name: str
                       ) -> tuple[SensitivityCurve, ...]:
    """The layer's rows of a sweep, if it was swept."""
    if report is None or name not in report.layers:
        return ()
    curves = []
    for sweep in ("sparsity", "bits"):
        table = report.sweep(sweep)
        if table.levels:
            curves.append(SensitivityCurve(sweep, list(table.levels),
                                           table.rows(report.layers)[name]))
    return tuple(curves)


@torch.no_grad()
def layer_stats(model: nn.Module, name: str, spec: ResolvedSpec,
                inputs: Tensor | Mapping[str, Tensor] | None = None,
                report: SensitivityReport | None = None, seed: int = 0,
                inputs_label: str = "samples") -> LayerStats:
    """Everything the layer view shows for the weighted layer ``name`` under ``spec``;
    ``inputs``: a small batch to take activation ranges on (``inputs_label`` says what)."""
    start = time.perf_counter()
    weight = layer_weight(model, name).detach().float().cpu()
    mask, after = planned_weight(weight, spec)
    chosen = _sample(weight.flatten(), HISTOGRAM_SAMPLE, seed)
    before_values = weight.flatten()[chosen].numpy()
    after_values = after.flatten()[chosen].numpy()
    limit = float(max(np.abs(before_values).max(initial=0.0), 1e-12))
    edges = np.linspace(-limit, limit, HISTOGRAM_BINS + 1)
    bits = integer_bits(spec)
    pruned = weight * mask
    rows = weight.reshape(weight.shape[0], -1)
    nm = parse_nm(spec.granularity) if spec.effective_sparsity > 0 else None
    act_min = act_max = None
    samples = 0
    if inputs is not None:
        act_min, act_max = activation_ranges(model, name, inputs)
        first = next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs
        samples = len(first)
    return LayerStats(
        name=name, shape=tuple(weight.shape), weights=weight.numel(),
        sampled=len(before_values), edges=edges,
        before=np.histogram(before_values, edges)[0],
        after=np.histogram(after_values, edges)[0],
        codes=_codes(pruned, bits) if bits else None,
        channel_min=rows.amin(1).numpy(), channel_max=rows.amax(1).numpy(),
        pattern=mask.reshape(weight.shape[0], -1)[:PATTERN_CROP[0], :PATTERN_CROP[1]]
        .to(torch.uint8).numpy(),
        group=nm[1] if nm else None,
        bits=spec.weight_bits if not spec.exclude else None,
        sqnr_db=sqnr_db(pruned, after) if bits or spec.weight_bits in ("fp16", "bf16")
        else None,
        sparsity_after=1.0 - float(mask.sum()) / mask.numel(),
        act_min=act_min, act_max=act_max, act_samples=samples, act_source=inputs_label,
        curves=sensitivity_curves(report, name),
        seconds=time.perf_counter() - start,
    )


@torch.no_grad()
def sqnr_by_layer(model: nn.Module, tree: LayerTree, resolved: list[ResolvedSpec]
                  ) -> dict[str, float]:
    """SQNR (dB) at the planned bits of every weighted layer that has integer or 16-bit bits
    planned: what the tree's SQNR column shows."""
    found = {}
    for node in tree.nodes:
        spec = resolved[node.id]
        if not node.prunable or spec.exclude or spec.weight_bits in (None, "fp32"):
            continue
        weight = layer_weight(model, node.name).detach().float().cpu()
        pruned = weight * plan_mask(weight, spec)
        found[node.name] = sqnr_db(pruned, fake_quantize_weight(pruned, spec.weight_bits))
    return found


def view_samples(workspace: Workspace, count: int = 8
                 ) -> tuple[Tensor | dict[str, Tensor] | None, str]:
    """A few inputs for activation ranges, without reading user files or running user code
    on a click: the demo's calibration digits when the data is the demo, else the example
    input (unit noise, said so), else none."""
    section = workspace.stages.get("data")
    demo_data = section.source == "demo" if section is not None else \
        workspace.model_path == DEMO
    if demo_data and workspace.loaded.capabilities.can_train:
        return model_inputs(demo_task(count).calibration), f"{count} demo calibration digits"
    if workspace.example is not None:
        return workspace.example.make_tensor(), "the example input (random noise, not data)"
    return None, "no samples"
