"""LoRA and DoRA adapters on a compressed torch model, through ``peft``.

The base model stays frozen; only the adapters train, so recovery needs memory for the
adapters' gradients and optimiser state alone (the low-memory way to recover large models).
``peft`` is imported only here and only when adapters are used: importing it takes ~10 s.

peft wraps the model in place: the adapted layers keep their names (their weights move under
``<name>.base_layer``), so hooks and plan names of the blocks around them still apply.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from studio.core.errors import StudioError
from studio.core.methods.quantization.qat import fake_quantize_weight
from studio.core.plan.plan import ResolvedSpec

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
"""The PEFT format of a saved adapter (what ``PeftModel.from_pretrained`` reads)."""


@dataclass(frozen=True)
class AdapterTarget:
    """One layer that gets an adapter, with its resolved plan settings."""

    name: str
    kind: str
    rank: int
    alpha: float
    dropout: float


@dataclass
class AttachedAdapters:
    """A model with adapters attached: ``peft_model`` wraps ``model`` (changed in place)."""

    model: nn.Module
    peft_model: Any
    targets: list[AdapterTarget]
    trainable: int
    """Adapter parameters (the only ones that train)."""
    base: int
    """Parameters of the frozen base model."""
    trained_before: frozenset[str]
    """The base parameters that were trainable before the adapters froze them."""


def _adaptable(module: nn.Module) -> bool:
    # transformers' GPT-2 Conv1D is matched by name so transformers is not imported here.
    return isinstance(module, nn.Linear | nn.Conv2d) or type(module).__name__ == "Conv1D"


def adapter_targets(model: nn.Module, resolved: Mapping[str, ResolvedSpec]
                    ) -> tuple[list[AdapterTarget], list[str]]:
    """The Linear/Conv layers whose resolved ``adapter`` is not ``none``, and notes on layers
    left out. A layer whose weight another layer shares (a tied LM head) is left out: merging
    an adapter into it would change the embedding as well."""
    owners = Counter(id(p) for m in model.modules() for p in m.parameters(recurse=False))
    targets, tied = [], []
    for name, module in model.named_modules():
        spec = resolved.get(name)
        if spec is None or spec.adapter == "none" or not _adaptable(module):
            continue
        if owners[id(module.weight)] > 1:
            tied.append(name)
            continue
        targets.append(AdapterTarget(name, spec.adapter, spec.adapter_rank, spec.adapter_alpha,
                                     spec.adapter_dropout))
    notes = [f"{', '.join(tied)}: no adapter, the weight is shared with another layer (tied); "
             "merging would change both"] if tied else []
    return targets, notes


def _anchored(name: str) -> str:
    """A peft pattern key matching exactly ``name`` (peft matches keys as name suffixes)."""
    return "^" + re.escape(name)


def attach_adapters(model: nn.Module, targets: list[AdapterTarget], seed: int = 0
                    ) -> AttachedAdapters:
    """Freeze ``model`` and add one adapter per target (rank and alpha per layer)."""
    kinds = {(t.kind, t.dropout) for t in targets}
    if len(kinds) > 1:
        described = "; ".join(f"{kind} with dropout {dropout}" for kind, dropout in sorted(kinds))
        raise StudioError(f"adapters: the plan asks for {described}; peft trains one adapter "
                          "kind and one dropout per model, so set adapter and adapter_dropout "
                          "once (plan.defaults) and vary only rank and alpha per layer")
    from peft import LoraConfig, get_peft_model  # ~10 s: only when adapters are used

    first = targets[0]
    config = LoraConfig(
        r=first.rank, lora_alpha=first.alpha, lora_dropout=first.dropout,
        use_dora=first.kind == "dora", bias="none",
        target_modules="^(" + "|".join(re.escape(t.name) for t in targets) + ")$",
        rank_pattern={_anchored(t.name): t.rank for t in targets if t.rank != first.rank},
        alpha_pattern={_anchored(t.name): t.alpha for t in targets
                       if t.alpha != first.alpha})
    base = sum(p.numel() for p in model.parameters())
    before = frozenset(name for name, p in model.named_parameters() if p.requires_grad)
    torch.manual_seed(seed)  # the A matrices start random
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return AttachedAdapters(model, peft_model, list(targets), trainable, base, before)


def quantize_base(model: nn.Module, bits: Mapping[str, int]) -> None:
    """Round each named layer's weight to its symmetric per-channel int grid, in place.

    QLoRA-style: the adapter then trains over the weights as they will be quantized and learns
    to make up for the rounding. bitsandbytes' NF4 is no base here (on CPU its merge gave
    garbage and it does not export to ONNX), so the studio's own grid is used."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, width in bits.items():
            weight = modules[name].weight
            weight.copy_(fake_quantize_weight(weight, width))


def save_adapter(attached: AttachedAdapters, folder: Path) -> list[Path]:
    """Write the adapter alone in PEFT format into ``folder`` (only its two files: peft also
    writes a model card, which is left out)."""
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        attached.peft_model.save_pretrained(scratch)
        return [Path(shutil.move(Path(scratch) / name, folder / name)) for name in ADAPTER_FILES]


def merge_adapters(attached: AttachedAdapters) -> nn.Module:
    """Fold the adapters into the weights; the model gets its plain layers back (same
    structure, names and size as before the adapters), trainable as before."""
    merged: nn.Module = attached.peft_model.merge_and_unload()
    for name, parameter in merged.named_parameters():
        parameter.requires_grad_(name in attached.trained_before)
    return merged
