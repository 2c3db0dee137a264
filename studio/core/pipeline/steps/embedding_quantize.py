"""int4 token embeddings (plan ``weight_bits: int4`` on an Embedding layer; int8 with
``quantize.weight_only``): round the table in
torch before GPTQ calibrates and before export, so every later step sees what the file will
hold; the quantize step then stores it as a ``GatherBlockQuantized`` lookup, with a tied LM
head as a ``MatMulNBits`` over the same integers (``embedding_nbits``)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from torch import nn

from studio.core.jobs import Event, Log
from studio.core.methods.quantization.embedding_nbits import (
    quantize_embedding,
    write_embedding_nbits,
)
from studio.core.methods.quantization.nbits_onnx import write_into_file
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.step import Need, StageReport, Step
from studio.core.plan.ort_rules import EMBEDDING_OPS, embedding_bits, embedding_group_problem
from studio.core.plan.stages import QuantizeSection

ROUNDED = "embedding_weights"
"""Key in ``context.stages["embedding_quantize"]`` holding the integers for the quantize step."""


class EmbeddingQuantize(Step):
    name = "embedding_quantize"
    settings = QuantizeSection
    needs = frozenset({Need.TORCH})

    def applies(self, context: RunContext) -> bool:
        return not context.settings(QuantizeSection).qat

    def run(self, context: RunContext) -> Generator[Event, None, StageReport]:
        section, workspace, model = (context.settings(QuantizeSection), context.workspace,
                                     context.model)
        layers: dict[str, Any] = {}
        weights = {}
        for node, spec in zip(workspace.tree.nodes, workspace.plan.resolve(workspace.tree),
                              strict=True):
            bits = embedding_bits(spec.weight_bits, section.weight_only)
            if node.op_type not in EMBEDDING_OPS or spec.exclude or bits is None:
                continue
            problem = embedding_group_problem(bits, spec.group_size)
            if problem is not None:
                context.note(f"{node.name}: {problem}; kept float.")
                continue
            module = model.get_submodule(node.name)
            if not isinstance(module, nn.Embedding):
                continue
            weights[node.name] = quantize_embedding(module, bits, spec.group_size,
                                                    section.symmetric)
            tied = [name for name, other in model.named_modules()
                    if isinstance(other, nn.Linear) and other.weight is module.weight]
            layers[node.name] = {"bits": bits, "group_size": spec.group_size,
                                 "tied_heads": tied}
        if not weights:
            return None
        yield Log(f"int4 embeddings: {', '.join(layers)} rounded to nearest in groups along "
                  "their width")
        return {"layers": layers, "symmetric": section.symmetric, ROUNDED: weights}


def write_embeddings(context: RunContext) -> dict[str, list[str]]:
    """Store the rounded tables in the quantized file; the stage report keeps the nodes
    written instead of the tensors."""
    stage = context.stages[EmbeddingQuantize.name]
    written, missing = write_into_file(context.model_path, stage.pop(ROUNDED),
                                       write_embedding_nbits)
    if missing:
        context.note(f"{', '.join(missing)}: the rounded table was not found as a lookup in "
                     "the exported file; kept as exported (float, on the int4 grid).")
    stage["written"] = written
    return written
