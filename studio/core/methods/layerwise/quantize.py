"""Weight-only integer quantization of a Linear layer in groups along its inputs: round to
nearest, and GPTQ (Frantar et al. 2022), which quantizes one input column at a time and moves
each column's rounding error onto the columns not yet quantized, weighted by the inverse
Hessian of the layer's inputs, so the layer's output error stays small.

The grid is the one onnxruntime's ``MatMulNBits`` stores: per group of ``group_size`` inputs
of one output, value = scale x (q - zero) with q in 0..2^bits-1; symmetric grids have no
stored zero point (it is 2^(bits-1)). Keeping to that grid lets the integers be written into
the ONNX file as they are (``nbits_onnx``). GPTQ is written from the paper (the reference,
IST-DASLab/gptq, was read, not copied) because it must run block by block in torch and honour
a pruning mask; onnxruntime's bundled GPTQ runs the whole graph at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from studio.core.methods.layerwise.inverse import dampened_inverse_factor


@dataclass(frozen=True)
class QuantizedWeight:
    """An [out, in] weight on the integer grid, group by group along the inputs."""

    q: Tensor
    """uint8 [out, in], values 0..2^bits-1."""
    scales: Tensor
    """float32 [out, groups]."""
    zeros: Tensor
    """uint8 [out, groups]; all 2^(bits-1) when symmetric."""
    bits: int
    group_size: int
    symmetric: bool

    def dequantized(self) -> Tensor:
        """The float [out, in] weight the integers stand for."""
        scales = self.scales.repeat_interleave(self.group_size, dim=1)[:, :self.q.shape[1]]
        zeros = self.zeros.repeat_interleave(self.group_size, dim=1)[:, :self.q.shape[1]]
        return scales * (self.q.float() - zeros.float())


def grid(group: Tensor, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Scale and zero point ([rows] each) of one group of columns [rows, g]. The range always
    holds 0, so a pruned weight stays exactly zero on the grid."""
    top = 2**bits - 1
    low = group.min(dim=1).values.clamp(max=0.0)
    high = group.max(dim=1).values.clamp(min=0.0)
    if symmetric:
        high = torch.maximum(-low, high)
        scale = 2 * high / top
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    else:
        scale = (high - low) / top
        zero = torch.round(-low / torch.where(scale > 0, scale, 1.0))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, zero


def _round(values: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    return torch.clamp(torch.round(values / scale) + zero, 0, 2**bits - 1)


def _check(bits: int, group_size: int) -> None:
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"weight-only quantization stores 2, 3, 4 or 8 bits, not {bits}")
    if group_size < 1:
        raise ValueError(f"group size {group_size}: use a positive number of inputs (128)")


def rtn_quantize(weight: Tensor, bits: int = 4, group_size: int = 128,
                 symmetric: bool = False) -> QuantizedWeight:
    """Round every weight to the nearest grid value of its group."""
    _check(bits, group_size)
    w = weight.detach().float()
    q = torch.empty_like(w, dtype=torch.uint8)
    scales, zeros = [], []
    for start in range(0, w.shape[1], group_size):
        group = w[:, start:start + group_size]
        scale, zero = grid(group, bits, symmetric)
        q[:, start:start + group_size] = _round(group, scale[:, None], zero[:, None], bits).to(
            torch.uint8)
        scales.append(scale)
        zeros.append(zero)
    return QuantizedWeight(q, torch.stack(scales, 1), torch.stack(zeros, 1).to(torch.uint8),
                           bits, group_size, symmetric)


def gptq_quantize(weight: Tensor, hessian: Tensor, bits: int = 4, group_size: int = 128,
                  symmetric: bool = False, damping: float = 0.01,
                  mask: Tensor | None = None, act_order: bool = False) -> QuantizedWeight:
    """GPTQ over column blocks of one group each (the group's grid is fitted on its columns
    as updated by the blocks before it). ``mask`` (keep-mask of a pruned layer) holds pruned
    weights at zero; their error is spread like any rounding error. ``act_order`` sweeps the
    columns by decreasing Hessian diagonal (the inputs with the most energy first, while the
    most columns are left to take their error; the reference's ``desc_act``) with every
    group's grid fitted on the original weights beforehand (its ``static_groups``), so the
    groups stay contiguous runs of inputs as MatMulNBits stores them."""
    _check(bits, group_size)
    w = weight.detach().float().clone()
    columns = w.shape[1]
    order = torch.arange(columns)
    if act_order:
        order = torch.argsort(torch.diag(hessian), descending=True, stable=True)
    fixed = [grid(w[:, start:start + group_size], bits, symmetric)
             for start in range(0, columns, group_size)] if act_order else None
    w = w[:, order]
    h = hessian.float()[order][:, order]
    kept_all = mask[:, order] if mask is not None else None
    upper = dampened_inverse_factor(h, w, damping)
    q = torch.empty_like(w, dtype=torch.uint8)
    scales = torch.empty(w.shape[0], -(-columns // group_size))
    zeros = torch.empty_like(scales)
    for start in range(0, columns, group_size):
        end = min(start + group_size, columns)
        groups = order[start:end] // group_size
        if fixed is None:
            scale, zero = grid(w[:, start:end], bits, symmetric)
            scales[:, start // group_size], zeros[:, start // group_size] = scale, zero
        # Swept transposed ([columns, out]) so each column is contiguous: the same arithmetic
        # as on the [out, columns] block, several times faster on CPU (as in ``sparsegpt``).
        block = w[:, start:end].t().contiguous()
        kept = kept_all[:, start:end].t().contiguous() if kept_all is not None else None
        inverse = upper[start:end, start:end]
        errors = torch.zeros_like(block)
        for column in range(end - start):
            if fixed is not None:
                scale, zero = fixed[int(groups[column])]
            values = block[column]
            integers = _round(values, scale, zero, bits)
            if kept is not None:
                integers = torch.where(kept[column], integers, zero)
            rounded = scale * (integers - zero)
            error = (values - rounded) / inverse[column, column]
            block[column:] -= inverse[column, column:].unsqueeze(1) * error.unsqueeze(0)
            errors[column] = error
            q[:, start + column] = integers.to(torch.uint8)
        w[:, end:] -= errors.t().contiguous() @ upper[start:end, end:]
    if fixed is not None:
        scales = torch.stack([scale for scale, _ in fixed], 1)
        zeros = torch.stack([zero for _, zero in fixed], 1)
    restored = torch.empty_like(q)
    restored[:, order] = q
    return QuantizedWeight(restored, scales, zeros.to(torch.uint8), bits, group_size,
                           symmetric)
