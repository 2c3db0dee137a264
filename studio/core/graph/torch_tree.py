"""Build a :class:`LayerTree` from a ``torch.nn.Module``.

The hierarchy comes from ``named_modules``; shapes and MACs from one forward pass on the example
input, with hooks that record each module's output shape and a function mode that charges every
heavy call to the innermost module running it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from studio.core.errors import InputError
from studio.core.graph.macs import MacCounter
from studio.core.graph.roles import annotate_roles
from studio.core.graph.tree import LayerTree
from studio.core.models.inputs import InputSpec
from studio.core.util import first_tensor


def module_type_name(module: nn.Module) -> str:
    return type(module).__name__


def build_torch_tree(
    module: nn.Module,
    example: InputSpec | None,
    model_name: str,
    type_names: dict[str, str] | None = None,
) -> LayerTree:
    """Tree of ``module``; shapes and MACs are filled only when ``example`` is given.

    ``type_names`` overrides the op type shown for a module name (used for ``torch.export``
    archives, whose unflattened modules have lost their original classes).
    """
    tree = LayerTree(model_name, "torch")
    ids: dict[int, int] = {}
    seen_tensors: set[int] = set()
    for name, sub in module.named_modules():
        if name:
            parent_name, _, label = name.rpartition(".")
            parent = tree.get(parent_name).id
        else:
            label, parent = model_name, None
        op_type = (type_names or {}).get(name) or module_type_name(sub)
        node = tree.add(name, label, op_type, parent)
        ids[id(sub)] = node.id
        weight = getattr(sub, "weight", None)
        tied = isinstance(weight, torch.Tensor) and id(weight) in seen_tensors
        for _, param in sub.named_parameters(recurse=False):
            if id(param) in seen_tensors:
                continue
            seen_tensors.add(id(param))
            node.params += param.numel()
            node.nbytes += param.numel() * param.element_size()
            node.zeros += param.numel() - int(torch.count_nonzero(param.detach()))
        for _, buffer in sub.named_buffers(recurse=False):
            if buffer is not None and id(buffer) not in seen_tensors:
                seen_tensors.add(id(buffer))
                node.nbytes += buffer.numel() * buffer.element_size()
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2 and not tied:
            node.weight_params = weight.numel()
            node.weight_bits = weight.element_size() * 8
            node.out_channels = int(weight.shape[0])
    if example is not None:
        _trace(module, example, tree, ids)
    annotate_roles(tree, module)
    return tree.finalize()


def _trace(module: nn.Module, example: InputSpec, tree: LayerTree, ids: dict[int, int]) -> None:
    stack: list[int] = [0]
    handles = []

    def enter(sub: nn.Module, _inputs: Any) -> None:
        stack.append(ids.get(id(sub), stack[-1]))

    channel_source: dict[int, int] = {}  # id(tensor) -> weighted layer that made its channels
    alive: list[Any] = []  # keeps traced tensors alive so their ids are not reused

    def leave(sub: nn.Module, inputs: Any, output: Any) -> None:
        node = tree.nodes[stack.pop()]
        tensor = first_tensor(output)
        if node.output_shape is None and tensor is not None:
            node.output_shape = tuple(tensor.shape)
        if node.children or tensor is None:
            return
        given = first_tensor(inputs)
        source = channel_source.get(id(given)) if given is not None else None
        if node.input_from is None:
            node.input_from = source
        made = node.id if node.prunable else source
        if made is not None:
            channel_source[id(tensor)] = made
        alive.extend((given, tensor))

    for sub in module.modules():
        handles.append(sub.register_forward_pre_hook(enter))
        handles.append(sub.register_forward_hook(leave))
    training = {sub: sub.training for sub in module.modules()}
    counter = MacCounter(lambda: stack[-1])
    try:
        module.eval()
        inputs = example.make_tensor()
        with torch.no_grad(), counter:
            module(inputs)
    except Exception as error:  # the user's forward can raise anything
        raise InputError(
            f"the model does not run on an input of shape {list(example.shape)} "
            f"({example.dtype}): {type(error).__name__}: {error}. "
            "Give the shape the model expects, batch first."
        ) from error
    finally:
        for handle in handles:
            handle.remove()
        for sub, mode in training.items():
            sub.train(mode)
    for node_id, macs in counter.macs.items():
        tree.nodes[node_id].macs += macs
    tree.example_input = example.shape
