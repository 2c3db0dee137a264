"""A once-for-all supernet over the user's own model: elastic width and elastic depth.

Width: every group of coupled output channels (Torch-Pruning's dependency groups, the same the
structured pruner cuts) keeps a share of its channels, the most important first (the group's L1
norm, as once-for-all sorts them). Instead of physically reordering tensors, the supernet keeps
each group's ranking; a subnet masks the dropped channels at the output of every conv, linear
and batch norm that carries them, which is exactly what cutting those channels computes.
The query, key and value projections of a BERT-like attention are one such group, but the model
splits their channels into heads of a fixed size, so there a head goes at a time (the heads'
magnitude ranks them, as the head pruner does); an FFN's hidden units are an ordinary group.
Groups that feed the model's output, run through other attention or pass through another kind
of layer (a LayerNorm would average over masked zeros) stay whole.

Depth: a residual block (a module that adds its input to what it computes, and whose output
has its input's shape) can be skipped: its output becomes its input.

:meth:`Supernet.extract` turns a subnet into a plain model: a copy cut with the structured
pruner (or the head pruner) using the supernet's own ranking (so the cut keeps exactly the
masked channels), with skipped blocks replaced by identities. It exports to ONNX like any
model.
"""

from __future__ import annotations

import copy
import operator
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from studio.core.errors import StudioError
from studio.core.graph.observe import observe
from studio.core.graph.roles import is_hf_attention
from studio.core.methods.pruning.structured import ROOT_TYPES, prune_channels, ranked_groups
from studio.core.methods.pruning.transformer import (
    HF_LAYOUT,
    head_layouts,
    head_scores,
    prune_heads,
)
from studio.core.plan.channels import kept_channels

CARRIER_TYPES = (*ROOT_TYPES, nn.modules.batchnorm._BatchNorm)
"""Layers a width mask may sit on: its output channels are the group's, one to one."""
_ADDS = {operator.add, operator.iadd, torch.add}


@dataclass(frozen=True)
class ElasticGroup:
    key: str
    """The group's first layer: how subnets and searches name it."""
    layers: list[str]
    carriers: list[str]
    channels: int
    attention: str | None = None
    """For the query/key/value projections of a BERT-like attention: that attention. Its
    channels are then dropped a whole head at a time (``unit`` channels), because the model
    splits them into heads of a fixed size; cutting single channels would mix heads."""
    unit: int = 1
    """Channels that go together: one, or a head's size."""

    @property
    def units(self) -> int:
        return self.channels // self.unit


@dataclass(frozen=True)
class Subnet:
    """Widths by group key (share of channels kept; a group not named keeps all) and the
    residual blocks skipped."""

    widths: dict[str, float] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"widths": dict(self.widths), "skipped": list(self.skipped)}


def residual_blocks(model: nn.Module, example: Tensor) -> list[str]:
    """Modules that add their input to what they compute and keep its shape (outermost
    only): skipping one leaves a model that runs."""
    shapes: dict[str, tuple[Any, Any]] = {}

    def hook(name: str) -> Any:
        def keep(_m: nn.Module, args: tuple, out: Any) -> None:
            shapes[name] = (tuple(args[0].shape) if len(args) == 1
                            and isinstance(args[0], Tensor) else None,
                            tuple(out.shape) if isinstance(out, Tensor) else None)
        return keep

    observe(model, example, [(module, hook(name)) for name, module in model.named_modules()
                             if name and any(True for _ in module.children())])
    found: list[str] = []
    for name, module in model.named_modules():
        if name not in shapes or any(name.startswith(f"{block}.") for block in found):
            continue
        before, after = shapes[name]
        if before is None or before != after:
            continue
        if any(isinstance(m, ROOT_TYPES) for m in module.modules()) and _adds_its_input(module):
            found.append(name)
    return found


def _adds_its_input(module: nn.Module) -> bool:
    """Whether ``module``'s traced forward adds its input to something (a skip connection).
    A forward torch.fx cannot trace is taken as not residual."""
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # any tracing failure: not a block we can reason about
        return False
    inputs = [node for node in graph.nodes if node.op == "placeholder"]
    if len(inputs) != 1:
        return False
    for node in graph.nodes:
        adds = (node.op == "call_function" and node.target in _ADDS) or (
            node.op == "call_method" and node.target in ("add", "add_"))
        if adds and inputs[0] in node.args:
            return True
    return False


def _attention_of(modules: Mapping[str, nn.Module], carriers: Sequence[str]) -> str | None:
    """The BERT-like attention whose query, key and value projections ``carriers`` are."""
    parents = {name.rsplit(".", 2)[0] for name in carriers if name.count(".") >= 2}
    if len(parents) != 1:
        return None
    (parent,) = parents
    module = modules.get(parent)
    if not is_hf_attention(module):
        return None
    inner = {f"{parent}.self.{part}" for part in ("query", "key", "value")}
    return parent if inner <= set(carriers) else None


def _channel_dim(module: nn.Module) -> int:
    return -1 if isinstance(module, nn.Linear) else 1


def _masked(output: Tensor, mask: Tensor, dim: int) -> Tensor:
    """``output`` with the channels along ``dim`` multiplied by ``mask``."""
    shape = [1] * output.dim()
    shape[dim] = -1
    return output * mask.to(output).reshape(shape)


class Supernet:
    """``model`` (trained in place) with its elastic groups, their rankings and its
    skippable blocks. Build with :meth:`build`."""

    def __init__(self, model: nn.Module, example: Tensor, groups: list[ElasticGroup],
                 scores: dict[str, Tensor], blocks: list[str]) -> None:
        self.model, self.example = model, example
        self.groups, self.scores, self.blocks = groups, scores, blocks
        self._modules = dict(model.named_modules())

    @classmethod
    def build(cls, model: nn.Module, example: Tensor,
              scores: Mapping[str, Tensor] | None = None) -> Supernet:
        """Trace ``model``'s groups and blocks on ``example``; ``scores`` (by group key)
        restore a saved ranking instead of ranking by the current weights."""
        modules = dict(model.named_modules())
        groups: list[ElasticGroup] = []
        ranked: dict[str, Tensor] = {}
        for found in ranked_groups(model, example):
            info = found.info
            if (info.feeds_output or info.through_attention or found.scores is None
                    or not info.layers or not all(isinstance(modules[name], CARRIER_TYPES)
                                                  for name in found.carriers)):
                continue
            key = info.layers[0]
            attention = _attention_of(modules, found.carriers)
            if attention is None:
                groups.append(ElasticGroup(key, list(info.layers), found.carriers,
                                           info.channels))
                ranked[key] = found.scores
                continue
            heads = int(modules[attention].self.num_attention_heads)
            groups.append(ElasticGroup(key, list(info.layers), found.carriers, info.channels,
                                       attention, info.channels // heads))
            ranked[key] = head_scores(modules[attention], HF_LAYOUT)
        if scores is not None:
            missing = [g.key for g in groups if g.key not in scores]
            if missing:
                raise StudioError(f"the saved supernet has no ranking for {', '.join(missing)}; "
                                  "it was trained on another model")
            ranked = {g.key: scores[g.key].detach().clone() for g in groups}
        return cls(model, example, groups, ranked, residual_blocks(model, example))

    def rerank(self) -> None:
        """Rank every group's channels (heads) by the current weights (before each width
        stage)."""
        channels = {found.info.layers[0]: found.scores
                    for found in ranked_groups(self.model, self.example)
                    if found.info.layers and found.scores is not None}
        self.scores = {group.key: channels[group.key] if group.attention is None
                       else head_scores(self._modules[group.attention], HF_LAYOUT)
                       for group in self.groups if group.key in channels}

    def keep_mask(self, key: str, width: float) -> Tensor:
        """1 for the channels a ``width`` share keeps, 0 for the rest: the least important
        channels (or heads) go first, exactly as the structured pruner removes them."""
        scores = self.scores[key]
        count = len(scores)
        remove = count - kept_channels(count, 1.0 - width)
        mask = torch.ones(count)
        mask[torch.argsort(scores, stable=True)[:remove]] = 0.0
        unit = next(group.unit for group in self.groups if group.key == key)
        return mask.repeat_interleave(unit)

    def largest(self) -> Subnet:
        return Subnet()

    def smallest(self, widths: Sequence[float], skip: bool) -> Subnet:
        return Subnet({g.key: min(widths) for g in self.groups},
                      tuple(self.blocks) if skip else ())

    def sample(self, rng: random.Random, widths: Sequence[float], skip: bool) -> Subnet:
        return Subnet({g.key: rng.choice(list(widths)) for g in self.groups},
                      tuple(b for b in self.blocks if skip and rng.random() < 0.5))

    @contextmanager
    def active(self, subnet: Subnet) -> Iterator[nn.Module]:
        """The model computing ``subnet`` (masks and skips as forward hooks) until exit."""
        handles = []
        try:
            for group in self.groups:
                width = subnet.widths.get(group.key, 1.0)
                if width >= 1.0:
                    continue
                mask = self.keep_mask(group.key, width)
                for name in group.carriers:
                    handles.append(self._modules[name].register_forward_hook(
                        lambda m, args, out, mask=mask: _masked(out, mask, _channel_dim(m))))
            for name in subnet.skipped:
                handles.append(self._modules[name].register_forward_hook(
                    lambda m, args, out: args[0]))
            yield self.model
        finally:
            for handle in handles:
                handle.remove()

    def extract(self, subnet: Subnet) -> nn.Module:
        """``subnet`` as a plain model (a copy: channels cut, skipped blocks gone)."""
        model = copy.deepcopy(self.model).eval()
        cut = [(group, 1.0 - subnet.widths.get(group.key, 1.0)) for group in self.groups
               if subnet.widths.get(group.key, 1.0) < 1.0]
        heads = {group.attention: ratio for group, ratio in cut if group.attention is not None}
        if heads:
            prune_heads(model, self.example, heads, head_layouts(model, heads),
                        scores={group.attention: self.scores[group.key]
                                for group, _ in cut if group.attention is not None})
        ratios = {name: ratio for group, ratio in cut if group.attention is None
                  for name in group.layers}
        if ratios:
            report = prune_channels(model, self.example, ratios,
                                    scores={key: self.scores[key] for key in self.scores})
            if report.skipped:
                raise StudioError(f"the subnet could not be cut: {report.skipped[0]}")
        for name in subnet.skipped:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
        return model

    def state(self) -> dict[str, Any]:
        """What :func:`load_supernet` needs beside the model's architecture."""
        return {"state_dict": self.model.state_dict(), "scores": dict(self.scores),
                "blocks": list(self.blocks)}


def load_supernet(model: nn.Module, example: Tensor, state: Mapping[str, Any]) -> Supernet:
    """The supernet saved by :meth:`Supernet.state`, on a fresh copy of its architecture."""
    try:
        model.load_state_dict(state["state_dict"])
    except (KeyError, RuntimeError) as error:
        raise StudioError("the saved supernet does not fit this model (was it trained on "
                          "another one?)") from error
    return Supernet.build(model, example, state["scores"])
