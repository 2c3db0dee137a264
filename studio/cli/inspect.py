"""``compression-studio inspect MODEL``: print the layer tree and totals, as text or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from studio.core.graph.tree import LayerNode, LayerTree
from studio.core.models.checks import describe_non_finite, find_non_finite
from studio.core.models.inputs import InputSpec
from studio.core.units import format_bytes, format_count, format_percent, format_shape
from studio.core.workspace import Workspace, open_workspace


def add_inspect_command(commands: Any, common: argparse.ArgumentParser) -> None:
    inspect = commands.add_parser(
        "inspect", parents=[common], help="print a model's layer tree and totals",
        description="Print the layer tree of MODEL (a .pt/.pth/.pt2/.safetensors/.onnx file, or "
                    "'demo') with shapes, parameters, MACs, bytes and sparsity.")
    inspect.add_argument("model", help="model file, or 'demo' for the built-in demo")
    inspect.add_argument("--arch", help="architecture of a state dict, as package.module:factory")
    inspect.add_argument("--input-shape", help="example input, batch first, e.g. 1,1,28,28 "
                         "(append :int64 for token ids); default: from the file")
    inspect.add_argument("--trust", action="store_true",
                         help="allow unpickling a whole module (runs code from the file)")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument("--depth", type=int, default=None,
                         help="show layers down to this depth only (text output)")
    inspect.set_defaults(handler=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    example = InputSpec.parse(args.input_shape) if args.input_shape else None
    workspace = open_workspace(args.model, args.arch, args.trust, example)
    module = workspace.loaded.module
    broken = find_non_finite(module) if module is not None else []
    if broken:
        print(f"compression-studio: warning: {args.model}: NaN or Inf weights in "
              f"{describe_non_finite(broken)}; `run` refuses this model until they are fixed",
              file=sys.stderr)
    if args.json:
        print(json.dumps(inspect_json(workspace), indent=1))
    else:
        print(inspect_text(workspace, args.depth))
    return 0


def _layer_json(node: LayerNode) -> dict[str, Any]:
    return {
        "name": node.name,
        "type": node.op_type,
        "role": node.role,
        "params": node.total_params,
        "macs": node.total_macs,
        "bytes": node.total_nbytes,
        "output_shape": list(node.output_shape) if node.output_shape is not None else None,
        "sparsity": round(node.sparsity, 6),
        "weight_bits": node.weight_bits,
        "leaf": node.is_leaf,
    } | ({"heads": {"query": node.query_heads, "key_value": node.kv_heads}}
         if node.kv_heads else {}) | ({"tied_to": node.tied_to} if node.tied_to is not None
                                     else {})


def inspect_json(workspace: Workspace) -> dict[str, Any]:
    """Figures of each layer are for its whole subtree; sum the ``leaf`` rows to add them up."""
    tree = workspace.tree
    return {
        "model": tree.model_name,
        "format": workspace.loaded.format,
        "example_input": str(workspace.example) if workspace.example else None,
        "layers": [_layer_json(node) for node in tree.nodes[1:]],
        "totals": {"params": tree.root.total_params, "macs": tree.root.total_macs,
                   "bytes": tree.root.total_nbytes},
        "notes": list(tree.notes),
    }


def _depth(tree: LayerTree, node: LayerNode) -> int:
    return sum(1 for _ in tree.ancestors(node))


def inspect_text(workspace: Workspace, max_depth: int | None = None) -> str:
    tree = workspace.tree
    rows = [("layer", "type", "output", "params", "MACs", "bytes", "sparsity")]
    for node in tree.nodes:
        depth = _depth(tree, node)
        if max_depth is not None and depth > max_depth:
            continue
        rows.append(("  " * depth + (node.label if node.name else tree.model_name),
                     node.type_label, format_shape(node.output_shape),
                     format_count(node.total_params), format_count(node.total_macs),
                     format_bytes(node.total_nbytes), format_percent(node.sparsity)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    example = f"example input {workspace.example}" if workspace.example else \
        "no example input: give --input-shape for shapes and MACs"
    lines.append(f"{tree.model_name} ({workspace.loaded.format}): "
                 f"{format_count(tree.root.total_params)} params, "
                 f"{format_count(tree.root.total_macs)} MACs, "
                 f"{format_bytes(tree.root.total_nbytes)}; {example}")
    lines.extend(f"note: {note}" for note in tree.notes)
    return "\n".join(lines)
