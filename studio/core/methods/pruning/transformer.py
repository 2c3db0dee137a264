"""Transformer pruning: attention heads, FFN width, and whole residual blocks (layer dropping).

- Heads. Torch-Pruning's ``MultiheadAttentionPruner`` cuts ``embed_dim`` (the residual width)
  and its head pruning (``num_heads`` + ``prune_num_heads``) only covers separate q/k/v Linears
  and leaves the module's own head count for the caller to fix. So heads are cut here: an
  ``nn.MultiheadAttention`` becomes a :class:`HeadPrunedAttention` with the kept heads' weights;
  a hand-written attention is described by a :class:`HeadLayout` and its Linears are sliced.
- FFN width: the hidden units between an FFN's two Linears form a channel group of their own,
  so :func:`prune_ffn` is structured channel pruning restricted to such self-contained groups.
- Blocks: a block computing ``x + f(x)`` can be dropped whole when its input and output shapes
  match; :func:`block_influence` says which blocks change their input least.

Every function checks that the model still runs with the same output shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from studio.core.errors import StudioError
from studio.core.graph.observe import observe
from studio.core.graph.roles import is_hf_attention
from studio.core.methods.pruning.attention import HeadPrunedAttention
from studio.core.methods.pruning.importance import (
    accumulate_gradients,
    check_importance,
    clear_gradients,
)
from studio.core.methods.pruning.measure import NO_SIZE, Size, measure, output_shapes
from studio.core.methods.pruning.structured import (
    StructuredReport,
    channel_groups,
    prune_channels,
)
from studio.core.plan.channels import kept_channels
from studio.core.train.loop import LossFn, cross_entropy
from studio.core.util import first_tensor

# ---------------------------------------------------------------------------- attention heads


@dataclass(frozen=True)
class HeadLayout:
    """Where a hand-written attention keeps its parts, as names relative to the attention module.

    ``query``/``key``/``value`` are Linears whose outputs are ``num_heads`` blocks of
    ``head_dim``; ``output`` is the Linear that mixes the heads back to the model width.
    ``num_heads`` names the attribute the forward reads; ``width_attrs`` name attributes holding
    ``num_heads * head_dim`` (such as ``all_head_size``), updated too.
    """

    query: str = "query"
    key: str = "key"
    value: str = "value"
    output: str = "output"
    num_heads: str = "num_heads"
    width_attrs: tuple[str, ...] = ()


HF_LAYOUT = HeadLayout(query="self.query", key="self.key", value="self.value",
                       output="output.dense", num_heads="self.num_attention_heads",
                       width_attrs=("self.all_head_size",))
"""A BERT-like Hugging Face attention (``BertAttention``), whose forward reshapes with -1 heads."""


def head_layouts(model: nn.Module, names: Iterable[str]) -> dict[str, HeadLayout]:
    """Layouts for the named attentions that need one (Hugging Face ones; torch's
    ``nn.MultiheadAttention`` is handled without)."""
    return {name: HF_LAYOUT for name in names if is_hf_attention(model.get_submodule(name))}


@dataclass
class TransformerReport:
    """What a transformer pruning step did; ``to_dict`` is JSON-ready."""

    changed: dict[str, list[int]] = field(default_factory=dict)
    """Module -> [before, after]: heads, hidden units or (for blocks) 1 -> 0."""
    removed: dict[str, list[int]] = field(default_factory=dict)
    """Module -> indices removed (heads), where that means something."""
    renamed: dict[str, str] = field(default_factory=dict)
    before: Size = NO_SIZE
    after: Size = NO_SIZE

    def to_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "removed": self.removed, "renamed": self.renamed,
                "before": asdict(self.before), "after": asdict(self.after)}


def _get(root: nn.Module, path: str) -> Any:
    value: Any = root
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _set(root: nn.Module, path: str, value: Any) -> None:
    parent, _, last = path.rpartition(".")
    setattr(_get(root, parent) if parent else root, last, value)


@dataclass(frozen=True)
class _Heads:
    """Tensors of one attention, split by head: rows (q/k/v outputs) and columns (output)."""

    rows: list[tuple[Tensor, int]]
    """(weight or bias, offset): entries ``offset + h*head_dim ...`` belong to head ``h``."""
    columns: list[Tensor]
    num_heads: int
    head_dim: int


def _heads_of(module: nn.Module, layout: HeadLayout | None) -> _Heads:
    if isinstance(module, nn.MultiheadAttention | HeadPrunedAttention):
        inner = module.num_heads * module.head_dim
        rows = [(module.in_proj_weight, part * inner) for part in range(3)]
        if module.in_proj_bias is not None:
            rows += [(module.in_proj_bias, part * inner) for part in range(3)]
        return _Heads(rows, [module.out_proj.weight], module.num_heads, module.head_dim)
    if layout is None:
        raise ValueError(f"{type(module).__name__} is not nn.MultiheadAttention; describe it "
                         "with a HeadLayout")
    num_heads = int(_get(module, layout.num_heads))
    projections = [_get(module, name) for name in (layout.query, layout.key, layout.value)]
    rows = [(p.weight, 0) for p in projections]
    rows += [(p.bias, 0) for p in projections if p.bias is not None]
    head_dim = projections[0].out_features // num_heads
    return _Heads(rows, [_get(module, layout.output).weight], num_heads, head_dim)


def head_scores(module: nn.Module, layout: HeadLayout | None = None,
                taylor: bool = False) -> Tensor:
    """Importance of each head: squared weights (or |w * grad| once gradients are accumulated)
    of its query/key/value rows and output-projection columns."""
    heads = _heads_of(module, layout)

    def score(t: Tensor) -> Tensor:
        if taylor:
            grad = t.grad if t.grad is not None else torch.zeros_like(t)
            return (t.detach() * grad).abs().float()
        return t.detach().float() ** 2

    d = heads.head_dim
    rows = [(score(tensor), offset) for tensor, offset in heads.rows]
    columns = [score(tensor) for tensor in heads.columns]
    scores = torch.zeros(heads.num_heads)
    for h in range(heads.num_heads):
        for values, offset in rows:
            scores[h] += values[offset + h * d: offset + (h + 1) * d].sum().cpu()
        for values in columns:
            scores[h] += values[:, h * d:(h + 1) * d].sum().cpu()
    return scores


def _cut_layout(module: nn.Module, layout: HeadLayout, keep: Sequence[int]) -> None:
    heads = _heads_of(module, layout)
    d = heads.head_dim
    removed = [h * d + i for h in range(heads.num_heads) if h not in keep for i in range(d)]
    for name in (layout.query, layout.key, layout.value):
        tp.prune_linear_out_channels(_get(module, name), removed)
    tp.prune_linear_in_channels(_get(module, layout.output), removed)
    _set(module, layout.num_heads, len(keep))
    for attr in layout.width_attrs:
        _set(module, attr, len(keep) * d)


def _disable_nested_fast_path(model: nn.Module) -> None:
    """``nn.TransformerEncoder`` may turn inputs into nested tensors for its fused path, which
    only ``nn.MultiheadAttention`` understands."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False


def prune_heads(model: nn.Module, example_inputs: Any, ratios: Mapping[str, float],
                layouts: Mapping[str, HeadLayout] | None = None, importance: str = "magnitude",
                data: TensorDataset | None = None,
                loss_fn: LossFn = cross_entropy,
                scores: Mapping[str, Tensor] | None = None) -> TransformerReport:
    """Remove ``ratios[name]`` of the heads of each named attention module, in place.

    A name is an ``nn.MultiheadAttention`` (replaced by a smaller :class:`HeadPrunedAttention`)
    or a module described in ``layouts``. At least one head always stays. ``importance`` is
    ``magnitude`` or ``taylor`` (with ``data``); ``scores`` given per attention (one per head,
    the lowest go) replace it there (the Fisher mask search's choice).
    """
    given = dict(scores or {})
    check_importance(importance, data)
    layouts = layouts or {}
    shapes = output_shapes(model, example_inputs)
    report = TransformerReport(before=measure(model, example_inputs))
    taylor = importance == "taylor"
    if taylor:
        assert data is not None
        accumulate_gradients(model, data, loss_fn)
    try:
        ranks = {name: given[name] if name in given else
                 head_scores(model.get_submodule(name), layouts.get(name), taylor)
                 for name in ratios}
    finally:
        if taylor:
            clear_gradients(model)
    for name, ratio in ratios.items():
        module = model.get_submodule(name)
        count = len(ranks[name])
        keep_count = kept_channels(count, ratio)
        keep = sorted(torch.argsort(ranks[name], descending=True, stable=True)[:keep_count]
                      .tolist())
        if keep_count == count:
            continue
        if name in layouts:
            _cut_layout(module, layouts[name], keep)
        else:
            _set(model, name, HeadPrunedAttention.keeping(module, keep))
        report.changed[name] = [count, keep_count]
        report.removed[name] = [h for h in range(count) if h not in keep]
    _disable_nested_fast_path(model)
    _check(model, example_inputs, shapes, "head pruning",
           ". Its forward may read the old sizes: name them in a HeadLayout (width_attrs) or "
           "leave this attention out")
    report.after = measure(model, example_inputs)
    return report


# ---------------------------------------------------------------------------- FFN width


def ffn_layers(model: nn.Module) -> list[str]:
    """First Linear of every FFN in torch's own transformer layers (``linear1``)."""
    return [f"{name}.linear1" for name, module in model.named_modules()
            if isinstance(module, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer)]


def prune_ffn(model: nn.Module, example_inputs: Any, ratios: Mapping[str, float],
              importance: str = "magnitude", data: TensorDataset | None = None,
              loss_fn: LossFn = cross_entropy,
              scores: Mapping[str, Tensor] | None = None) -> StructuredReport:
    """Remove ``ratios[name]`` of the hidden units of each FFN, named by its first Linear.

    Refuses a layer whose outputs are coupled with other layers (that is the residual width, not
    an FFN's hidden units), so the model width and attention are never touched.
    """
    groups = {info.layers[0]: info for info in channel_groups(model, example_inputs)
              if len(info.layers) == 1}
    for name in ratios:
        info = groups.get(name)
        if info is None or info.feeds_output or info.through_attention:
            raise ValueError(f"{name!r} is not the first Linear of an FFN: its outputs are "
                             "coupled with other layers or feed the model output")
    return prune_channels(model, example_inputs, ratios, importance, data, loss_fn=loss_fn,
                          scores=scores)


# ---------------------------------------------------------------------------- blocks


class SkippedBlock(nn.Module):
    """What a dropped residual block becomes: its input, passed through unchanged."""

    def __init__(self, tuple_length: int = 0) -> None:
        super().__init__()
        self.tuple_length = tuple_length
        """0 when the block returned a tensor; else the length of the tuple it returned."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, Tensor))
        if self.tuple_length:
            return (x, *([None] * (self.tuple_length - 1)))
        return x


def _block_io(model: nn.Module, names: Iterable[str], example_inputs: Any
              ) -> dict[str, tuple[Tensor, Tensor, int]]:
    """(input, output, tuple length) of each named block on one forward pass."""
    seen: dict[str, tuple[Tensor, Tensor, int]] = {}

    def hook(name: str) -> Callable[..., None]:
        def keep(_m: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = args[0] if args else first_tensor(kwargs)
            y = output if isinstance(output, Tensor) else first_tensor(output)
            length = len(output) if isinstance(output, tuple) else 0
            if isinstance(x, Tensor) and y is not None and name not in seen:
                seen[name] = (x.detach(), y.detach(), length)
        return keep

    observe(model, example_inputs, [(model.get_submodule(name), hook(name)) for name in names],
            with_kwargs=True)
    return seen


def block_influence(model: nn.Module, names: Sequence[str], inputs: Any) -> dict[str, float]:
    """How much each block changes its input: 1 - mean cosine(input, output) over tokens.

    Near 0 means the block passes its input through almost unchanged: the safest to drop
    (the "block influence" of ShortGPT, Men et al. 2024).
    """
    influence = {}
    for name, (x, y, _) in _block_io(model, names, inputs).items():
        if x.shape != y.shape:
            raise ValueError(f"block {name!r} changes the shape {tuple(x.shape)} -> "
                             f"{tuple(y.shape)}; only shape-keeping blocks can be dropped")
        cosine = F.cosine_similarity(x.flatten(0, -2).float(), y.flatten(0, -2).float(), dim=-1)
        influence[name] = float(1.0 - cosine.mean())
    return influence


def _encoder_slot(model: nn.Module, name: str) -> tuple[str, int] | None:
    """(encoder name, index) when ``name`` is a layer of an ``nn.TransformerEncoder``."""
    parent_name, _, index = name.rpartition(".")
    encoder_name, _, list_attr = parent_name.rpartition(".")
    if not parent_name or list_attr != "layers" or not index.isdigit():
        return None
    encoder = model.get_submodule(encoder_name)
    return (encoder_name, int(index)) if isinstance(encoder, nn.TransformerEncoder) else None


def drop_blocks(model: nn.Module, example_inputs: Any, names: Sequence[str]) -> TransformerReport:
    """Drop the named blocks (input and output shapes must match), in place.

    A block is replaced by a :class:`SkippedBlock` so other names stay the same, except inside
    ``nn.TransformerEncoder``, whose forward reads attributes of its first layer: there dropped
    layers are removed from the list and later layers renumbered (see ``report.renamed``).
    Everything is checked before anything changes.
    """
    shapes = output_shapes(model, example_inputs)
    report = TransformerReport(before=measure(model, example_inputs))
    io = _block_io(model, names, example_inputs)
    encoder_drops: dict[str, list[int]] = {}
    for name in names:
        if name not in io:
            raise ValueError(f"block {name!r} does not run on the example input")
        x, y, _ = io[name]
        if x.shape != y.shape:
            raise ValueError(f"block {name!r} changes the shape {tuple(x.shape)} -> "
                             f"{tuple(y.shape)}; only shape-keeping blocks can be dropped")
        slot = _encoder_slot(model, name)
        if slot is not None:
            encoder_drops.setdefault(slot[0], []).append(slot[1])
    for encoder_name, indices in encoder_drops.items():
        if len(set(indices)) >= len(model.get_submodule(encoder_name).layers):
            raise ValueError(f"dropping every layer of {encoder_name or 'the encoder'} leaves "
                             "nothing to run; keep at least one")
    for name in names:
        if _encoder_slot(model, name) is None:
            _set(model, name, SkippedBlock(io[name][2]))
        report.changed[name] = [1, 0]
    for encoder_name, indices in encoder_drops.items():
        report.renamed.update(_remove_encoder_layers(model, encoder_name, indices))
    _check(model, example_inputs, shapes, "dropping blocks")
    report.after = measure(model, example_inputs)
    return report


def _remove_encoder_layers(model: nn.Module, encoder_name: str,
                           indices: list[int]) -> dict[str, str]:
    encoder = model.get_submodule(encoder_name)
    prefix = f"{encoder_name}.layers." if encoder_name else "layers."
    kept = [i for i in range(len(encoder.layers)) if i not in set(indices)]
    encoder.layers = nn.ModuleList([encoder.layers[i] for i in kept])
    encoder.num_layers = len(kept)
    return {f"{prefix}{old}": f"{prefix}{new}" for new, old in enumerate(kept) if old != new}


# ---------------------------------------------------------------------------- checks


def _check(model: nn.Module, example_inputs: Any, shapes: list[tuple[int, ...]],
           what: str, hint: str = "") -> None:
    try:
        new_shapes = output_shapes(model, example_inputs)
    except Exception as error:  # the model's own forward can raise anything
        raise StudioError(f"after {what} the model no longer runs: {type(error).__name__}: "
                          f"{error}{hint}") from error
    if new_shapes != shapes:
        raise StudioError(f"{what} changed the model's output shapes from {shapes} to "
                          f"{new_shapes}")


__all__ = ["HF_LAYOUT", "HeadLayout", "HeadPrunedAttention", "SkippedBlock", "TransformerReport",
           "block_influence", "drop_blocks", "ffn_layers", "head_layouts", "head_scores",
           "prune_ffn", "prune_heads"]
