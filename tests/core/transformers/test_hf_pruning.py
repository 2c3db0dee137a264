"""Plans on transformers: channels on attention cut heads, on FFNs their width; the estimate
counts exactly what the cut removes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from studio.core.graph.torch_tree import build_torch_tree
from studio.core.methods.pruning import RESIDUAL_REASON, apply_plan_pruning, partition_plan
from studio.core.models.inputs import InputSpec
from studio.core.plan.estimate import estimate
from studio.core.plan.spec import LayerSpec
from studio.core.workspace import open_workspace

pytest.importorskip("transformers")

CHANNELS_HALF = LayerSpec(sparsity=0.5, granularity="channels")


def _cut_and_compare(model: nn.Module, example: InputSpec, plan_specs: dict[str, LayerSpec]):
    from studio.core.plan.plan import Plan

    tree = build_torch_tree(model, example, "m")
    plan = Plan(plan_specs)
    resolved = plan.resolve(tree)
    predicted = estimate(tree, resolved)
    pruned = copy.deepcopy(model)
    result = apply_plan_pruning(pruned, tree, resolved, example.make_tensor())
    after = build_torch_tree(pruned, example, "m").root
    return tree, partition_plan(tree, resolved), predicted, result, pruned, after


def test_block_plan_cuts_heads_and_ffn_width_as_estimated(tiny_bert: Path) -> None:
    workspace = open_workspace(str(tiny_bert))
    _, partition, predicted, result, pruned, after = _cut_and_compare(
        workspace.loaded.module, workspace.example, {"model.encoder.layer.0": CHANNELS_HALF})
    assert partition.heads == {"model.encoder.layer.0.attention": 0.5}
    assert partition.ffn == {"model.encoder.layer.0.intermediate.dense": 0.5}
    assert partition.channels == {}
    assert partition.left_whole == {"model.encoder.layer.0.attention.output.dense":
                                    RESIDUAL_REASON,
                                    "model.encoder.layer.0.output.dense": RESIDUAL_REASON}
    layer = pruned.model.encoder.layer[0]
    assert layer.attention.self.num_attention_heads == 2
    assert layer.attention.self.query.out_features == 16
    assert layer.attention.output.dense.in_features == 16
    assert layer.intermediate.dense.out_features == 32
    assert layer.output.dense.in_features == 32
    assert pruned.model.encoder.layer[1].attention.self.num_attention_heads == 4
    assert result.report["transformer"]["heads"]["changed"] == {
        "model.encoder.layer.0.attention": [4, 2]}
    assert (predicted.after.params, predicted.after.macs) == (after.total_params,
                                                              after.total_macs)
    ids = torch.tensor([[2, 7, 9, 3, 0, 0]])
    with torch.no_grad():
        assert pruned(ids).shape == workspace.loaded.module(ids).shape


def test_channels_set_inside_an_attention_say_where_to_set_them(tiny_bert: Path) -> None:
    workspace = open_workspace(str(tiny_bert))
    workspace.plan.set_spec("model.encoder.layer.1.attention.self.query", CHANNELS_HALF)
    partition = partition_plan(workspace.tree, workspace.plan.resolve(workspace.tree))
    assert partition.is_empty
    assert "set channels on that attention" in partition.left_whole[
        "model.encoder.layer.1.attention.self.query"]


def test_an_excluded_part_keeps_the_attention_whole(tiny_bert: Path) -> None:
    workspace = open_workspace(str(tiny_bert))
    workspace.plan.set_spec("model.encoder.layer.0.attention", CHANNELS_HALF)
    workspace.plan.set_spec("model.encoder.layer.0.attention.self.value",
                            LayerSpec(exclude=True))
    resolved = workspace.plan.resolve(workspace.tree)
    partition = partition_plan(workspace.tree, resolved)
    assert partition.heads == {} and "excluded" in partition.left_whole[
        "model.encoder.layer.0.attention"]
    assert estimate(workspace.tree, resolved).ratio("params") == 1.0


def test_torch_encoder_layers_get_roles_and_exact_estimates() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32,
                                       batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False))
    example = InputSpec((1, 5, 16))
    tree, partition, predicted, _, _, after = _cut_and_compare(
        model, example, {"0.layers.0": CHANNELS_HALF})
    assert tree.get("0.layers.0").role == "encoder block"
    assert tree.get("0.layers.0.self_attn").role == "attention"
    assert tree.get("0.layers.0.linear1").role == "FFN"
    assert partition.heads == {"0.layers.0.self_attn": 0.5}
    assert partition.ffn == {"0.layers.0.linear1": 0.5}
    assert predicted.after.params == after.total_params
    assert predicted.after.macs == after.total_macs
