"""Transformer roles in a torch layer tree: embeddings, encoder blocks, attention and FFN; and
for causal LMs decoder blocks, their attention (query and key/value head counts), MLP
(gate/up/down) and the LM head (tied to the token embeddings or not).

Modules are recognised by their structure (child names and types), so every BERT-like Hugging
Face model (BERT, RoBERTa, ELECTRA, MiniLM...) and torch's own ``nn.TransformerEncoderLayer`` /
``nn.MultiheadAttention`` are covered without a list of class names. Besides the label the tree
shows, the annotation records what head and FFN pruning will change, so the plan estimate can
count them from the tree alone: each attention's head count, the nodes its heads split
(``head_of``), and which layer reads the attention's and the FFN's inner width (``input_from``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from studio.core.graph.tree import LayerNode, LayerTree

EMBEDDINGS = "embeddings"
BLOCK = "encoder block"
ATTENTION = "attention"
FFN = "FFN"
DECODER_BLOCK = "decoder block"
MLP = "MLP"
LM_HEAD = "LM head"
ROLES = (EMBEDDINGS, BLOCK, ATTENTION, FFN, DECODER_BLOCK, MLP, LM_HEAD)
DECODER_PARTS = {"q_proj": "query", "k_proj": "key", "v_proj": "value",
                 "o_proj": "attention output", "c_attn": "query/key/value (packed)",
                 "gate_proj": "MLP gate", "up_proj": "MLP up", "down_proj": "MLP down",
                 "c_fc": "MLP up"}
"""Roles of the layers inside a decoder's attention and MLP, by their name in transformers'
LLaMA-style (Qwen2, Mistral...) and GPT-2 blocks; GPT-2's ``c_proj`` is the attention output
or the MLP down projection, by its parent."""


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


def _has_linears(module: object, *names: str) -> bool:
    """Children of those names holding a 2-D weight (``nn.Linear``, GPT-2's ``Conv1D``)."""
    return isinstance(module, nn.Module) and all(
        isinstance(getattr(getattr(module, name, None), "weight", None), nn.Parameter)
        and getattr(module, name).weight.dim() == 2 for name in names)


def is_decoder_attention(module: nn.Module | None) -> bool:
    """A causal LM's self-attention: LLaMA-style q/k/v/o projections, or GPT-2's packed
    ``c_attn`` and ``c_proj``."""
    return (_has_linears(module, "q_proj", "k_proj", "v_proj", "o_proj")
            or (_has_linears(module, "c_attn", "c_proj")
                and isinstance(getattr(module, "num_heads", None), int)))


def is_decoder_mlp(module: nn.Module | None) -> bool:
    """A causal LM's MLP: gate/up/down (LLaMA-style) or up/down (GPT-2's c_fc/c_proj)."""
    return _has_linears(module, "up_proj", "down_proj") or _has_linears(module, "c_fc",
                                                                        "c_proj")


def is_decoder_block(module: nn.Module) -> bool:
    """A decoder block: a decoder attention (``self_attn`` or ``attn``) and an MLP."""
    attention = getattr(module, "self_attn", None) or getattr(module, "attn", None)
    return is_decoder_attention(attention) and is_decoder_mlp(getattr(module, "mlp", None))


def decoder_heads(module: nn.Module) -> tuple[int, int]:
    """(query heads, key/value heads) of a decoder attention, from its projections' widths
    and head size (GPT-2 has no grouped-query attention: both are its ``num_heads``)."""
    if _has_linears(module, "q_proj", "k_proj"):
        head_dim = int(getattr(module, "head_dim", 0) or 0)
        if head_dim <= 0:
            return 0, 0
        return (module.q_proj.weight.shape[0] // head_dim,
                module.k_proj.weight.shape[0] // head_dim)
    heads = int(getattr(module, "num_heads", 0))
    return heads, heads


def module_role(module: nn.Module) -> str | None:
    """The role of one module, or None."""
    if is_decoder_block(module):
        return DECODER_BLOCK
    if is_decoder_attention(module):
        return ATTENTION
    if is_decoder_mlp(module):
        return MLP
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

    _annotate_lm_ends(tree, model)
    for name, module in model.named_modules():
        here = node(name)
        role = module_role(module)
        if here is None or role is None:
            continue
        here.role = role
        if role in (ATTENTION, MLP) and (is_decoder_attention(module)
                                         or is_decoder_mlp(module)):
            _annotate_decoder_parts(here, module, node, name, role)
            continue
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


def _annotate_decoder_parts(here: LayerNode, module: nn.Module, node: Any, name: str,
                            role: str) -> None:
    """Head counts on a decoder attention; each projection's role inside it or the MLP."""
    if role == ATTENTION:
        here.query_heads, here.kv_heads = decoder_heads(module)
    for child, part in DECODER_PARTS.items():
        leaf = node(name, child)
        if leaf is not None:
            leaf.role = part
    output = node(name, "c_proj")
    if output is not None:
        output.role = "attention output" if role == ATTENTION else "MLP down"


def _annotate_lm_ends(tree: LayerTree, model: nn.Module) -> None:
    """The token embeddings and the LM head of every causal LM inside ``model`` (a module with
    ``get_input_embeddings`` / ``get_output_embeddings``, as transformers' have); the head
    records the embeddings it is tied to, when it shares their weight."""
    names = {id(module): name for name, module in model.named_modules()}
    for module in model.modules():
        try:
            embeddings = module.get_input_embeddings()
            head = module.get_output_embeddings()
        except (AttributeError, NotImplementedError):
            continue
        if not isinstance(embeddings, nn.Embedding) or not isinstance(head, nn.Module):
            continue
        embedding_node = tree.get(names[id(embeddings)]) if id(embeddings) in names else None
        head_node = tree.get(names[id(head)]) if id(head) in names else None
        if embedding_node is None or head_node is None:
            continue
        embedding_node.role, head_node.role = EMBEDDINGS, LM_HEAD
        if getattr(head, "weight", None) is embeddings.weight:
            head_node.tied_to = embedding_node.id
