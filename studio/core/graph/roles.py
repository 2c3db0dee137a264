"""Transformer roles in a torch layer tree: embeddings, encoder blocks, attention and FFN.

Modules are recognised by their structure (child names and types), so every BERT-like Hugging
Face model (BERT, RoBERTa, ELECTRA, MiniLM...) and torch's own ``nn.TransformerEncoderLayer`` /
``nn.MultiheadAttention`` are covered without a list of class names. Besides the label the tree
shows, the annotation records what head and FFN pruning will change, so the plan estimate can
count them from the tree alone: each attention's head count, the nodes its heads split
(``head_of``), and which layer reads the attention's and the FFN's inner width (``input_from``).
"""

from __future__ import annotations

from torch import nn

from studio.core.graph.tree import LayerNode, LayerTree

EMBEDDINGS = "embeddings"
BLOCK = "encoder block"
ATTENTION = "attention"
FFN = "FFN"
ROLES = (EMBEDDINGS, BLOCK, ATTENTION, FFN)


def _is_linear(module: object) -> bool:
    return isinstance(module, nn.Linear)


def is_hf_attention(module: nn.Module | None) -> bool:
    """A BERT-like attention: ``self.query/key/value`` Linears split into
    ``self.num_attention_heads`` heads, mixed back by ``output.dense``."""
    inner = getattr(module, "self", None)
    return (isinstance(inner, nn.Module)
            and all(_is_linear(getattr(inner, part, None)) for part in ("query", "key", "value"))
            and isinstance(getattr(inner, "num_attention_heads", None), int)
            and _is_linear(getattr(getattr(module, "output", None), "dense", None)))


def is_packed_attention(module: nn.Module | None) -> bool:
    """``nn.MultiheadAttention`` or anything shaped like it (one packed in_proj, out_proj)."""
    return (isinstance(getattr(module, "in_proj_weight", None), nn.Parameter)
            and isinstance(getattr(module, "num_heads", None), int)
            and _is_linear(getattr(module, "out_proj", None)))


def _is_hf_ffn(module: nn.Module | None) -> bool:
    """BERT's ``intermediate``: one Linear (``dense``) and its activation."""
    return _is_linear(getattr(module, "dense", None)) and hasattr(module, "intermediate_act_fn")


def is_hf_block(module: nn.Module) -> bool:
    """A BERT-like encoder block: HF attention, ``intermediate`` FFN and ``output.dense``."""
    return (is_hf_attention(getattr(module, "attention", None))
            and _is_hf_ffn(getattr(module, "intermediate", None))
            and _is_linear(getattr(getattr(module, "output", None), "dense", None)))


def _is_torch_block(module: nn.Module) -> bool:
    return isinstance(module, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer)


def module_role(module: nn.Module) -> str | None:
    """The role of one module, or None."""
    if is_hf_attention(module) or is_packed_attention(module):
        return ATTENTION
    if is_hf_block(module) or _is_torch_block(module):
        return BLOCK
    if _is_hf_ffn(module):
        return FFN
    if type(module).__name__.endswith("Embeddings") and isinstance(
            getattr(module, "word_embeddings", None), nn.Embedding):
        return EMBEDDINGS
    return None


def head_count(module: nn.Module) -> int:
    """Heads of an attention module (0 for anything else)."""
    if is_hf_attention(module):
        return int(module.self.num_attention_heads)
    if is_packed_attention(module):
        return int(module.num_heads)
    return 0


def annotate_roles(tree: LayerTree, model: nn.Module) -> None:
    """Set ``role``, ``heads``, ``head_of`` and the FFN/attention ``input_from`` links on the
    nodes of ``tree`` (built from ``model`` by ``build_torch_tree``), in place."""

    def node(prefix: str, *parts: str) -> LayerNode | None:
        name = ".".join(p for p in (prefix, *parts) if p)
        return tree.get(name) if name in tree else None

    def link(consumer: LayerNode | None, producer: LayerNode | None) -> None:
        if consumer is not None and producer is not None:
            consumer.input_from = producer.id

    for name, module in model.named_modules():
        here = node(name)
        role = module_role(module)
        if here is None or role is None:
            continue
        here.role = role
        if role == ATTENTION:
            here.heads = head_count(module)
            if is_hf_attention(module):
                for part in (("self",), ("self", "query"), ("self", "key"), ("self", "value")):
                    split = node(name, *part)
                    if split is not None:
                        split.head_of = here.id
                link(node(name, "output", "dense"), node(name, "self", "value"))
            else:
                here.head_of = here.id
                link(node(name, "out_proj"), here)
        elif role == FFN:
            dense = node(name, "dense")
            if dense is not None:
                dense.role = FFN
        elif role == BLOCK and _is_torch_block(module):
            first = node(name, "linear1")
            if first is not None:
                first.role = FFN
            link(node(name, "linear2"), first)
        elif role == BLOCK:
            link(node(name, "output", "dense"), node(name, "intermediate", "dense"))
