"""Which onnxruntime quantization pass each weighted layer gets: the backend's rules, in one place.

The plan names torch layers; the ONNX file names nodes (``/res/conv2/Conv``). The ONNX layer
tree groups those nodes under scopes that carry the torch names (``res.conv2``), so each node
takes the settings of its nearest enclosing layer that the plan resolved. From those settings:

- int8 weights + int8 activations -> static QDQ (calibrated), the fast int8 path on CPU;
- int8 weights + float activations -> dynamic int8 (MatMulInteger / ConvInteger);
- fp16 weights -> fp16 conversion; fp32, unset bits or ``exclude`` -> the node stays float;
- int4 / int2 weights on MatMul or Gemm -> block-wise weight-only ``MatMulNBits``; int8 weights
  with float activations too when ``weight_only`` (8-bit ``MatMulNBits`` instead of dynamic int8);
- int4 / int2 weights on Conv -> not possible with ORT post-training quantization; said in
  ``notes`` (quantization-aware training gets the values onto the low-bit grid, and even then
  ORT stores and runs them as int8).

One ORT model cannot mix static and dynamic int8, nor int8 and fp16: the plan picks one main
mode and says in ``notes`` which layers were kept float because of it.

They read only the layer tree and the resolved plan, so the plan's size estimate applies the
very decisions the engine makes (:func:`studio.core.plan.estimate.estimate` runs them on the
torch tree, whose ``Conv2d``/``Linear`` leaves stand for the ONNX ``Conv``/``Gemm``/``MatMul``
nodes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import chain

from studio.core.graph.onnx_tree import BODY_SCOPE
from studio.core.graph.tree import LayerNode, LayerTree
from studio.core.plan.plan import Plan, ResolvedSpec

MATMUL_OPS = frozenset({"Gemm", "MatMul", "Linear", "Conv1D"})
"""ONNX ops, and the torch modules each stands for in the torch tree (Linear, and the
transformers ``Conv1D`` of GPT-2-style models, a Linear with its weight transposed)."""
CONV_OPS = frozenset({"Conv", "ConvTranspose", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
                      "ConvTranspose2d", "ConvTranspose3d"})
WEIGHTED_OPS = MATMUL_OPS | CONV_OPS
EMBEDDING_OPS = frozenset({"Embedding"})
"""Token tables of the torch tree: int4 ones (and int8 ones with ``weight_only``) are looked up
block-quantized (``embedding_nbits``, done in torch before export; a tied LM head shares their
integers)."""
EMBEDDING_BITS = (4, 8)
"""What onnxruntime's CPU ``GatherBlockQuantized`` looks up from a packed uint8 table."""


def embedding_bits(weight_bits: str | None, weight_only: bool) -> int | None:
    """Bits of a block-quantized token table for the plan's ``weight_bits`` (int8 only when
    int8 means weight-only), or None when the table is not one."""
    bits = {"int4": 4, "int2": 2, "int8": 8 if weight_only else None}.get(weight_bits or "")
    return bits


def embedding_group_problem(bits: int, group_size: int) -> str | None:
    """Why ``GatherBlockQuantized`` cannot store a table at these settings, or None."""
    if bits not in EMBEDDING_BITS:
        return (f"int{bits} embeddings: onnxruntime's GatherBlockQuantized looks up int4 and "
                "int8 only")
    if group_size < 16 or group_size & (group_size - 1):
        return (f"group size {group_size}: GatherBlockQuantized needs a power of two of at "
                "least 16")
    return None


FLOAT_BITS = frozenset({"fp32", "fp16", "bf16"})
NBITS = {"int4": 4, "int2": 2}


@dataclass
class QuantPlan:
    """What the ORT passes will do to each node of one ONNX file."""

    mode: str | None
    """Main pass: ``static``, ``dynamic``, ``fp16``, or None when no node wants one."""
    exclude_nodes: tuple[str, ...] = ()
    """Nodes the main pass must leave alone (kept float, or left for the n-bit pass)."""
    quantize_nodes: tuple[str, ...] = ()
    """Weighted nodes the main pass quantizes (static/dynamic) or converts (fp16)."""
    matmul_nbits: dict[str, int] = field(default_factory=dict)
    """MatMul/Gemm node -> bits (4 or 2) for the weight-only MatMulNBits pass."""
    group_sizes: dict[str, int] = field(default_factory=dict)
    """MatMulNBits node -> weights sharing one scale (the plan's ``group_size``)."""
    qat_layers: dict[str, int] = field(default_factory=dict)
    """Layer -> bits asked for that only quantization-aware training can approach."""
    decisions: dict[str, str] = field(default_factory=dict)
    """Weighted node -> what happens to it, in words (for reports and the GUI)."""
    layers: dict[str, str] = field(default_factory=dict)
    """Node -> the layer governing it, as the plan names layers (what ``plan.layers`` takes)."""
    notes: list[str] = field(default_factory=list)
    weighted_only: bool = False
    """Static int8 of the weighted nodes alone (their inputs and weights); adds, norms and
    softmax stay float. Chosen for models without convolutions (transformers)."""

    @property
    def int4_matmul_nodes(self) -> tuple[str, ...]:
        return tuple(n for n, bits in self.matmul_nbits.items() if bits == 4)

    @property
    def fp16_nodes(self) -> tuple[str, ...]:
        return self.quantize_nodes if self.mode == "fp16" else ()

    @property
    def is_empty(self) -> bool:
        return self.mode is None and not self.matmul_nbits


def resolved_by_name(tree: LayerTree, plan: Plan) -> dict[str, ResolvedSpec]:
    """``plan`` resolved on ``tree`` (usually the torch tree), keyed by layer name."""
    return {node.name: spec for node, spec in zip(tree.nodes, plan.resolve(tree), strict=True)}


def _governing(tree: LayerTree, node: LayerNode, resolved: Mapping[str, ResolvedSpec]
               ) -> tuple[str | None, ResolvedSpec | None]:
    """The nearest enclosing layer (the node itself first) that has resolved settings."""
    for candidate in chain([node], tree.ancestors(node)):
        if candidate.name in resolved:
            return candidate.name, resolved[candidate.name]
    return None, None


def _in_body(tree: LayerTree, node: LayerNode) -> bool:
    """Whether the node lies in the body of an If/Loop/Scan node (see the ONNX layer tree)."""
    return any(ancestor.op_type == BODY_SCOPE for ancestor in tree.ancestors(node))


def _layers(names: list[str]) -> str:
    unique = sorted(dict.fromkeys(names))
    shown = ", ".join(repr(n) for n in unique[:6])
    return shown + (f" and {len(unique) - 6} more" if len(unique) > 6 else "")


def plan_to_ort(tree_onnx: LayerTree, resolved_by_torch_name: Mapping[str, ResolvedSpec],
                weight_only: bool = False, int8_path: str = "auto") -> QuantPlan:
    """Decide the ORT passes for the ONNX file whose tree is ``tree_onnx``.

    ``int8_path`` decides int8 layers whose act_bits is unset (QuantizeSection.int8_path):
    ``auto`` makes them static when the model has convolutions among them or other static
    layers (dynamic ConvInteger runs several times slower than fp32 on ORT CPU, and one
    model cannot mix both), else dynamic; ``static``/``dynamic`` force one.

    ``weight_only``: MatMul/Gemm nodes with int8 weights and float activations get 8-bit
    weight-only ``MatMulNBits`` (dequantized in the kernel, float compute) instead of dynamic
    int8 (QuantizeSection.weight_only).

    ``resolved_by_torch_name`` maps layer names to their resolved settings, e.g.
    :func:`resolved_by_name` of the torch tree; names the ONNX file does not keep as scopes
    (batch norms folded into convolutions) simply pass their settings to nothing.
    """
    static: list[str] = []
    dynamic: list[str] = []
    fp16: list[str] = []
    floats: list[str] = []  # weighted nodes kept float
    float_other: list[str] = []  # unweighted nodes whose layer says float
    not_fp16: list[str] = []  # every node the fp16 pass must block
    nbits: dict[str, int] = {}
    groups: dict[str, int] = {}
    qat: dict[str, int] = {}
    decisions: dict[str, str] = {}
    layer_of: dict[str, str] = {}
    bf16_layers: list[str] = []
    int16_layers: list[str] = []
    unset: list[str] = []  # int8 nodes whose act_bits leaves static vs dynamic to int8_path
    for node in tree_onnx.nodes:
        if not node.is_leaf or node.parent is None:
            continue
        layer, spec = _governing(tree_onnx, node, resolved_by_torch_name)
        layer_of[node.name] = layer or node.name
        bits = spec.weight_bits if spec is not None else None
        if bits != "fp16":
            not_fp16.append(node.name)
        table_bits = embedding_bits(bits, weight_only) if node.op_type in EMBEDDING_OPS \
            else None
        if table_bits is not None and not spec.exclude:
            problem = embedding_group_problem(table_bits, spec.group_size)
            decisions[node.name] = f"float ({problem})" if problem else \
                f"{bits} weight-only (GatherBlockQuantized)"
            continue
        if node.op_type not in WEIGHTED_OPS or not node.weight_params:
            if spec is not None and (spec.exclude or bits in FLOAT_BITS):
                float_other.append(node.name)
            continue
        if spec is None or spec.exclude or bits is None or bits in ("fp32", "bf16"):
            floats.append(node.name)
            why = "excluded" if spec is not None and spec.exclude else bits or "not set"
            decisions[node.name] = f"float ({why})"
            if bits == "bf16" and not (spec and spec.exclude):
                bf16_layers.append(layer_of[node.name])
            continue
        if bits == "fp16":
            fp16.append(node.name)
            decisions[node.name] = "fp16"
            continue
        act = spec.act_bits
        if act == "int16":
            int16_layers.append(layer_of[node.name])
        if bits in NBITS and node.op_type in MATMUL_OPS:
            nbits[node.name] = NBITS[bits]
            groups[node.name] = spec.group_size
            decisions[node.name] = f"{bits} weight-only (MatMulNBits)"
            continue
        if weight_only and bits == "int8" and act != "int8" and node.op_type in MATMUL_OPS:
            nbits[node.name] = 8
            groups[node.name] = spec.group_size
            decisions[node.name] = "int8 weight-only (MatMulNBits)"
            continue
        if bits in NBITS:
            qat[layer_of[node.name]] = NBITS[bits]
        if act is None and int8_path != "dynamic":
            unset.append(node.name)
            continue
        (static if act == "int8" else dynamic).append(node.name)
        decisions[node.name] = "int8 static" if act == "int8" else "int8 dynamic"
    notes: list[str] = []
    convs = [n for n in unset if tree_onnx.get(n).op_type in CONV_OPS]
    if unset and (int8_path == "static" or convs or static):
        static += unset
        for name in unset:
            decisions[name] = "int8 static"
        if int8_path == "auto" and convs:
            notes.append(
                f"{_layers([layer_of[n] for n in unset])}: int8 without act_bits quantized "
                "static (activations too): dynamic int8 convolutions run several times slower "
                "than fp32 on CPU. quantize.int8_path: dynamic forces dynamic.")
    else:
        dynamic += unset
        for name in unset:
            decisions[name] = "int8 dynamic"
    if qat:
        notes.append(
            f"{_layers(list(qat))}: int4/int2 convolutions cannot be made by onnxruntime "
            "post-training quantization; they are quantized to int8 here. Quantization-aware "
            "training puts their weights on the low-bit grid, and even then ORT stores and "
            "runs them as int8 (no smaller file, no faster kernel than int8).")
    if bf16_layers:
        notes.append(f"{_layers(bf16_layers)}: bf16 is not offered by onnxruntime's CPU "
                     "converters; kept fp32.")
    if int16_layers:
        notes.append(f"{_layers(int16_layers)}: ORT CPU has no int16 integer kernels; int16 "
                     "activations are treated as float activations.")
    in_bodies = [n for n in static if _in_body(tree_onnx, tree_onnx.get(n))]
    if static and in_bodies:
        notes.append(
            f"{_layers([layer_of[n] for n in in_bodies])}: inside If/Loop/Scan bodies, which "
            "onnxruntime's static (QDQ) quantizer does not reach; left float. Dynamic int8 "
            "(act_bits unset), fp16 and int4 weight-only do reach them.")
        for name in in_bodies:
            decisions[name] = "float (static int8 does not reach If/Loop/Scan bodies)"
        floats += in_bodies
        static = [n for n in static if n not in in_bodies]
    if static:
        mode = "static"
        if dynamic:
            notes.append(
                f"{_layers([layer_of[n] for n in dynamic])}: int8 weights with float "
                "activations (dynamic) cannot share one ORT model with static int8 layers; "
                "kept float. Set their act_bits to int8 to quantize them.")
            for name in dynamic:
                decisions[name] = "float (dynamic int8 cannot mix with static)"
            floats += dynamic
        chosen = static
    elif dynamic:
        mode, chosen = "dynamic", dynamic
        convs = [n for n in dynamic if tree_onnx.get(n).op_type in CONV_OPS]
        if convs:
            notes.append(
                f"{_layers([layer_of[n] for n in convs])}: dynamic int8 convolutions run as "
                "ConvInteger, which on ORT CPU is several times slower than fp32; set act_bits "
                "to int8 for static quantization.")
    elif fp16:
        mode, chosen = "fp16", fp16
        notes.append("fp16 halves the weights; ORT CPU has few fp16 kernels and inserts casts, "
                     "so expect it to run slower than fp32 on CPU (it is meant for GPUs).")
    else:
        mode, chosen = None, []
    if fp16 and mode in ("static", "dynamic"):
        notes.append(f"{_layers([layer_of[n] for n in fp16])}: fp16 layers cannot share one "
                     "ORT model with int8 layers; kept fp32.")
        for name in fp16:
            decisions[name] = "float (fp16 cannot mix with int8)"
        floats += fp16
    exclude = not_fp16 if mode == "fp16" else [*floats, *float_other, *nbits]
    weighted_only = mode == "static" and not any(
        tree_onnx.get(n).op_type in CONV_OPS for n in chosen)
    if weighted_only:
        notes.append(
            "Static int8 without convolutions (a transformer): only the MatMul/Gemm layers "
            "are quantized, with their inputs; residual adds, norms and softmax stay float, "
            "since one uint8 range per tensor cannot hold a transformer's residual outliers "
            "(MiniLM token cosine 0.76 with them quantized, 0.90 without).")
    return QuantPlan(mode=mode, exclude_nodes=tuple(dict.fromkeys(exclude)),
                     quantize_nodes=tuple(chosen), matmul_nbits=nbits, group_sizes=groups,
                     qat_layers=qat, decisions=decisions, layers=layer_of, notes=notes,
                     weighted_only=weighted_only)
