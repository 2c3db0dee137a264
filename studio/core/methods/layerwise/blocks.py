"""Run a transformer one block at a time on calibration tokens, so that layer-wise methods
(SparseGPT, Wanda, GPTQ) hold the activations of one block, not of the whole model.

The inputs of the first block are caught with a forward pre-hook (the rest of the model never
runs); each block then runs on the previous block's outputs, after the method changed it, as
in the SparseGPT and GPTQ papers, so later blocks calibrate on what the compressed model
really feeds them. Hand-written because no installed library does this for an arbitrary
Hugging Face model (ORT's bundled GPTQ runs the whole ONNX graph at once).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from studio.core.errors import StudioError
from studio.core.methods.pruning.transformer import SkippedBlock


class _Caught(Exception):
    """Raised by the pre-hook once the first block's inputs are held: nothing else runs."""


def is_linear(module: nn.Module) -> bool:
    """A Linear layer, or Hugging Face's ``Conv1D`` (GPT-2), which is a Linear stored [in, out]."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def weight_matrix(module: nn.Module) -> Tensor:
    """The weight as [out, in] (a float32 copy): the layout every layer-wise method uses."""
    weight = module.weight.detach()
    weight = weight.t() if type(module).__name__ == "Conv1D" else weight
    return weight.float().contiguous().clone()


def module_layout(module: nn.Module, matrix: Tensor) -> Tensor:
    """An [out, in] matrix (or mask) in the layout of the module's weight; and back again."""
    return matrix.t() if type(module).__name__ == "Conv1D" else matrix


@torch.no_grad()
def set_weight_matrix(module: nn.Module, matrix: Tensor) -> None:
    """Write an [out, in] matrix back in the module's own layout and dtype."""
    module.weight.copy_(module_layout(module, matrix).to(module.weight.dtype))


def _holds_blocks(modules: nn.ModuleList) -> bool:
    """Entries of one class holding Linear layers, apart from dropped blocks."""
    kept = [m for m in modules if not isinstance(m, SkippedBlock)]
    return bool(kept) and len({type(m) for m in kept}) == 1 \
        and any(is_linear(m) for m in kept[0].modules())


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's repeated blocks: the longest ModuleList whose entries share one class
    (``model.layers`` in LLaMA, ``transformer.h`` in GPT-2, ``encoder.layer`` in BERT);
    dropped blocks (pass-throughs) may sit among them."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and _holds_blocks(module) \
                and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None:
        raise StudioError("layer-wise pruning and quantization need a transformer with a list "
                          "of repeated blocks holding Linear layers; this model has none")
    return best


class LayerStats(Protocol):
    def add(self, inputs: Tensor) -> None:
        """Take one batch of the layer's inputs ([..., in_features])."""


@dataclass
class _Inputs:
    hidden: list[Tensor]
    args: list[tuple[Any, ...]]
    kwargs: list[dict[str, Any]]


def _is_cache(value: Any) -> bool:
    return type(value).__name__.endswith("Cache")


def _first_block_inputs(model: nn.Module, block: nn.Module,
                        batches: Iterable[Tensor]) -> _Inputs:
    caught = _Inputs([], [], [])

    def catch(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        # A key/value cache would grow with every calibration batch and let later batches
        # attend to earlier ones: the blocks run without one.
        caught.hidden.append(args[0] if args else kwargs.pop("hidden_states"))
        caught.args.append(tuple(None if _is_cache(a) else a for a in args[1:]))
        caught.kwargs.append({key: None if _is_cache(value) else value
                              for key, value in kwargs.items()}
                             | ({"use_cache": False} if "use_cache" in kwargs else {}))
        raise _Caught

    device = next(model.parameters()).device
    # A cache would hold every block's keys and values: ask for none where the model has one.
    options = {"use_cache": False} if "use_cache" in inspect.signature(
        model.forward).parameters else {}
    handle = block.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for batch in batches:
            with contextlib.suppress(_Caught):
                model(batch.to(device), **options)
    finally:
        handle.remove()
    return caught


def _run(block: nn.Module, inputs: _Inputs, index: int) -> Tensor:
    out = block(inputs.hidden[index], *inputs.args[index], **inputs.kwargs[index])
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def calibrate_blockwise(model: nn.Module, batches: Iterable[Tensor],
                        wanted: Callable[[str], bool],
                        stats_for: Callable[[nn.Module], LayerStats],
                        apply: Callable[[str, nn.Module, LayerStats], None],
                        check: Callable[[], None] | None = None) -> int:
    """For every block: gather ``stats_for`` each wanted Linear layer (full module names) from
    the block's inputs, ``apply`` the method to each layer, then feed the changed block's
    outputs to the next block. ``batches`` are token-id tensors [batch, seq]. Returns the
    number of layers changed."""
    training = model.training
    model.eval()
    prefix, blocks = decoder_blocks(model)
    inputs = _first_block_inputs(model, blocks[0], batches)
    if not inputs.hidden:
        raise StudioError("layer-wise calibration needs calibration tokens; the split is empty")
    changed = 0
    try:
        for number, block in enumerate(blocks):
            if check is not None:
                check()
            base = f"{prefix}.{number}"
            layers = {f"{base}.{name}": module for name, module in block.named_modules()
                      if is_linear(module) and wanted(f"{base}.{name}")}
            stats = {name: stats_for(module) for name, module in layers.items()}
            handles = [module.register_forward_hook(
                lambda _m, args, _out, s=stats[name]: s.add(args[0]))
                for name, module in layers.items()]
            try:
                for index in range(len(inputs.hidden)):
                    _run(block, inputs, index)
            finally:
                for handle in handles:
                    handle.remove()
            for name, module in layers.items():
                apply(name, module, stats[name])
            changed += len(layers)
            inputs.hidden = [_run(block, inputs, index) for index in range(len(inputs.hidden))]
    finally:
        model.train(training)
    return changed


def token_batches(tokens: Tensor, batch_size: int = 8) -> list[Tensor]:
    """Token blocks [n, seq] as a list of batches."""
    return list(torch.split(tokens, batch_size))


def linear_names(model: nn.Module, names: Mapping[str, Any] | None = None) -> list[str]:
    """Full names of the Linear layers inside the model's blocks (limited to ``names``)."""
    prefix, blocks = decoder_blocks(model)
    found = [f"{prefix}.{number}.{name}" for number, block in enumerate(blocks)
             for name, module in block.named_modules() if is_linear(module)]
    return [name for name in found if names is None or name in names]
