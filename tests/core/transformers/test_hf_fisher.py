"""Fisher mask search through the plan on a tiny BERT: the same shape as the magnitude cut, the
search (estimated distortion before and after rearrangement) in the report."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from studio.core.methods.pruning import apply_plan_pruning
from studio.core.plan.spec import LayerSpec
from studio.core.workspace import open_workspace

pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_a_plan_cuts_a_tiny_bert_by_fisher_with_the_search_in_the_report(tiny_bert):
    workspace = open_workspace(str(tiny_bert))
    for block in range(2):
        workspace.plan.set_spec(f"model.encoder.layer.{block}",
                                LayerSpec(sparsity=0.5, granularity="channels"))
    resolved = workspace.plan.resolve(workspace.tree)
    example = workspace.example.make_tensor()
    ids = TensorDataset(torch.randint(1, 100, (64, 12)))
    shapes = {}
    for importance in ("magnitude", "fisher"):
        model = copy.deepcopy(workspace.loaded.module)
        report = apply_plan_pruning(model, workspace.tree, resolved, example, ids,
                                    importance).report
        shapes[importance] = (report["transformer"]["heads"]["changed"],
                              report["transformer"]["ffn"]["after"])
    assert shapes["fisher"] == shapes["magnitude"]
    searched = report["transformer"]["fisher"]
    assert searched["samples"] == 64 and searched["magnitude_instead"] == []
    assert len(searched["layers"]) == 4
    assert all(layer["rearranged_cost"] <= layer["search_cost"]
               for layer in searched["layers"].values())
