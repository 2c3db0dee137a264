"""Multi-head attention that can hold fewer heads than its model width.

``nn.MultiheadAttention`` ties its inner width to ``embed_dim`` (``num_heads * head_dim`` must
equal it), so removing heads from it is impossible in place. :class:`HeadPrunedAttention` keeps
the same call signature, parameter names (``in_proj_weight``, ``in_proj_bias``, ``out_proj``) and
results, with ``num_heads * head_dim`` free to be smaller than ``embed_dim``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _head_rows(keep: Sequence[int], head_dim: int, offset: int = 0) -> list[int]:
    return [offset + head * head_dim + i for head in keep for i in range(head_dim)]


class HeadPrunedAttention(nn.Module):
    """Self/cross attention with ``num_heads`` heads of ``head_dim`` over an ``embed_dim`` model."""

    _qkv_same_embed_dim = False
    """Read by ``nn.TransformerEncoderLayer``: False turns off its fused fast path, which
    assumes ``num_heads * head_dim == embed_dim``."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True,
                 dropout: float = 0.0, batch_first: bool = False) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.batch_first = batch_first
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim

    @classmethod
    def keeping(cls, attention: nn.MultiheadAttention | HeadPrunedAttention,
                keep: Sequence[int]) -> HeadPrunedAttention:
        """A copy of ``attention`` with only the heads in ``keep`` (their weights unchanged)."""
        if isinstance(attention, nn.MultiheadAttention) and (
                not attention._qkv_same_embed_dim or attention.bias_k is not None
                or attention.add_zero_attn):
            raise ValueError("head pruning supports MultiheadAttention without kdim/vdim, "
                             "add_bias_kv or add_zero_attn")
        keep = sorted(set(keep))
        if not keep or keep[0] < 0 or keep[-1] >= attention.num_heads:
            raise ValueError(f"keep at least one of the {attention.num_heads} heads")
        head_dim = attention.head_dim
        inner = attention.num_heads * head_dim
        rows = [r for part in range(3) for r in _head_rows(keep, head_dim, part * inner)]
        bias = attention.in_proj_bias is not None
        pruned = cls(attention.embed_dim, len(keep), head_dim, bias, attention.dropout,
                     attention.batch_first)
        source = attention.in_proj_weight
        with torch.no_grad():
            pruned = pruned.to(device=source.device, dtype=source.dtype)
            pruned.in_proj_weight.copy_(source[rows])
            columns = _head_rows(keep, head_dim)
            pruned.out_proj.weight.copy_(attention.out_proj.weight[:, columns])
            if bias:
                pruned.in_proj_bias.copy_(attention.in_proj_bias[rows])
                pruned.out_proj.bias.copy_(attention.out_proj.bias)
        pruned.train(attention.training)
        return pruned

    def _mask(self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, is_causal: bool,
              batch: int, length: int, source: int, dtype: torch.dtype) -> Tensor | None:
        """One additive mask broadcastable to (batch, heads, length, source)."""
        total: Tensor | None = None

        def additive(mask: Tensor) -> Tensor:
            if mask.dtype == torch.bool:
                return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                    mask, float("-inf"))
            return mask.to(dtype)

        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, source, dtype=torch.bool,
                                   device=self.in_proj_weight.device).triu(1)
        if attn_mask is not None:
            mask = additive(attn_mask)
            if mask.dim() == 3:
                if mask.shape[0] != batch * self.num_heads:
                    raise ValueError("a 3-D attn_mask must be (batch * heads, L, S) with the "
                                     f"pruned head count {self.num_heads}")
                mask = mask.view(batch, self.num_heads, length, source)
            total = mask
        if key_padding_mask is not None:
            padding = additive(key_padding_mask).view(batch, 1, 1, source)
            total = padding if total is None else total + padding
        return total

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or unbatched:  # work batch first: (N, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, length, _ = query.shape
        source = key.shape[1]
        inner = self.inner_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        parts = [F.linear(x, w[i * inner:(i + 1) * inner],
                          None if b is None else b[i * inner:(i + 1) * inner])
                 .view(batch, x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)
                 for i, x in enumerate((query, key, value))]
        q, k, v = parts
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        mask = self._mask(attn_mask, key_padding_mask, is_causal, batch, length, source,
                          scores.dtype)
        if mask is not None:
            scores = scores + mask
        probs = torch.softmax(scores, dim=-1)
        dropped = F.dropout(probs, self.dropout, self.training) if self.dropout else probs
        context = torch.matmul(dropped, v).transpose(1, 2).reshape(batch, length, inner)
        out = self.out_proj(context)
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        weights = probs.mean(1) if average_attn_weights else probs
        return out, weights.squeeze(0) if unbatched else weights
