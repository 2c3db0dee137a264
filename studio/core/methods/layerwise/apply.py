"""Whole-model entry points: prune or quantize the chosen Linear layers of a transformer block
by block from calibration tokens (see ``blocks``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from studio.core.methods.layerwise.blocks import (
    LayerStats,
    calibrate_blockwise,
    module_layout,
    set_weight_matrix,
    token_batches,
    weight_matrix,
)
from studio.core.methods.layerwise.quantize import QuantizedWeight, gptq_quantize, rtn_quantize
from studio.core.methods.layerwise.sparsegpt import sparsegpt_prune
from studio.core.methods.layerwise.stats import ColumnNorms, Hessian
from studio.core.methods.layerwise.wanda import wanda_mask
from studio.core.methods.pruning.masks import MaskSet

PruneMethod = Literal["sparsegpt", "wanda"]
QuantMethod = Literal["rtn", "gptq"]


@dataclass(frozen=True)
class PruneTarget:
    """How much of one layer to prune: ``sparsity`` unstructured, or N:M when ``nm`` is set."""

    sparsity: float
    nm: tuple[int, int] | None = None


@dataclass(frozen=True)
class QuantTarget:
    bits: int = 4
    group_size: int = 128


@dataclass
class LayerwiseResult:
    masks: MaskSet = field(default_factory=MaskSet)
    quantized: dict[str, QuantizedWeight] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    """Layer -> relative output error ||(W' - W) X|| / ||W X|| on the calibration inputs."""
    rounded_only: list[str] = field(default_factory=list)
    """Layers GPTQ could not calibrate (outside the repeated blocks, such as the LM head):
    rounded to nearest instead."""


def _relative_error(before: Tensor, after: Tensor, hessian: Tensor) -> float:
    """||(W'-W)X||_F / ||WX||_F from H = 2/n X^T X (no activations kept)."""
    delta = after - before
    num = torch.einsum("ij,jk,ik->", delta, hessian, delta)
    den = torch.einsum("ij,jk,ik->", before, hessian, before)
    return float((num / den).clamp(min=0).sqrt()) if den > 0 else 0.0


@torch.no_grad()
def prune_layerwise(model: nn.Module, tokens: Tensor, targets: Mapping[str, PruneTarget],
                    method: PruneMethod = "sparsegpt", batch_size: int = 8,
                    check: Callable[[], None] | None = None) -> LayerwiseResult:
    """Prune ``targets`` (module name -> target) of ``model`` in place with SparseGPT (mask
    and OBS update) or Wanda (mask only), from token blocks ``tokens`` [n, seq]."""
    result = LayerwiseResult()

    def stats_for(module: nn.Module) -> LayerStats:
        return Hessian(module) if method == "sparsegpt" else ColumnNorms(module)

    def apply(name: str, module: nn.Module, stats: LayerStats) -> None:
        target, weight = targets[name], weight_matrix(module)
        if isinstance(stats, Hessian):
            pruned, mask = sparsegpt_prune(weight, stats.matrix, target.sparsity, target.nm)
            result.errors[name] = _relative_error(weight, pruned, stats.matrix)
        else:
            assert isinstance(stats, ColumnNorms)
            mask = wanda_mask(weight, stats.squares, target.sparsity, target.nm)
            pruned = weight * mask
        set_weight_matrix(module, pruned)
        result.masks.masks[name] = module_layout(module, mask)

    calibrate_blockwise(model, token_batches(tokens, batch_size), targets.__contains__,
                        stats_for, apply, check)
    return result


@torch.no_grad()
def quantize_layerwise(model: nn.Module, tokens: Tensor | None,
                       targets: Mapping[str, QuantTarget], method: QuantMethod = "gptq",
                       symmetric: bool = False, masks: MaskSet | None = None,
                       batch_size: int = 8, check: Callable[[], None] | None = None,
                       act_order: bool = False) -> LayerwiseResult:
    """Put the weights of ``targets`` on their integer grids in place (the model then computes
    what the quantized file will: fake quantization) and return the integers. GPTQ needs
    ``tokens``; round-to-nearest needs none. ``masks`` keeps pruned weights at zero;
    ``act_order``: see :func:`gptq_quantize`."""
    result = LayerwiseResult()

    def apply(name: str, module: nn.Module, stats: LayerStats | None) -> None:
        target, weight = targets[name], weight_matrix(module)
        mask = module_layout(module, masks[name]) if masks is not None and name in masks \
            else None
        if isinstance(stats, Hessian):
            quantized = gptq_quantize(weight, stats.matrix, target.bits, target.group_size,
                                      symmetric, mask=mask, act_order=act_order)
        else:
            quantized = rtn_quantize(weight * mask if mask is not None else weight,
                                     target.bits, target.group_size, symmetric)
        rounded = quantized.dequantized()
        if isinstance(stats, Hessian):
            result.errors[name] = _relative_error(weight, rounded, stats.matrix)
        set_weight_matrix(module, rounded)
        result.quantized[name] = quantized

    if method == "rtn":
        for name, module in model.named_modules():
            if name in targets:
                apply(name, module, None)
        return result
    if tokens is None:
        raise ValueError("GPTQ needs calibration tokens")
    calibrate_blockwise(model, token_batches(tokens, batch_size), targets.__contains__,
                        Hessian, apply, check)
    for name, module in model.named_modules():
        if name in targets and name not in result.quantized:
            apply(name, module, None)
            result.rounded_only.append(name)
    return result
