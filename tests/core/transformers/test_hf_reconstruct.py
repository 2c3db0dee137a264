"""Least-squares reconstruction after cutting heads and FFN width: the re-fitted output
projections bring the pruned model closer to the uncompressed one on tokens it never saw."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from studio.core.engine.run import run_workspace
from studio.core.jobs import CancelToken, JobCancelled, Result
from studio.core.methods.pruning import apply_plan_pruning, partition_plan
from studio.core.methods.pruning.reconstruct import (
    hf_output_blocks,
    reconstruct_outputs,
    reconstruct_pruned,
)
from studio.core.plan.recipe import Recipe
from studio.core.plan.spec import LayerSpec
from studio.core.workspace import open_workspace

from .test_hf_engine import _token_ids

pytest.importorskip("transformers")

ATTENTIONS = [f"model.encoder.layer.{i}.attention" for i in range(2)]
FFNS = [f"model.encoder.layer.{i}.intermediate.dense" for i in range(2)]


def _half_cut(folder: Path) -> tuple[nn.Module, nn.Module]:
    """(uncompressed, pruned) tiny BERT: half the heads and FFN units of both blocks gone."""
    workspace = open_workspace(str(folder))
    for block in range(2):
        workspace.plan.set_spec(f"model.encoder.layer.{block}",
                                LayerSpec(sparsity=0.5, granularity="channels"))
    original = workspace.loaded.module.eval()
    resolved = workspace.plan.resolve(workspace.tree)
    partition = partition_plan(workspace.tree, resolved)
    assert sorted(partition.heads) == ATTENTIONS and sorted(partition.ffn) == FFNS
    pruned = copy.deepcopy(original)
    apply_plan_pruning(pruned, workspace.tree, resolved, workspace.example.make_tensor())
    return original, pruned.eval()


def _error(model: nn.Module, original: nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.linalg.norm(model(ids) - original(ids)))


def test_reconstruction_lowers_the_error_on_held_out_tokens(tiny_bert: Path) -> None:
    original, pruned = _half_cut(tiny_bert)
    held_out = _token_ids(32, 16, seed=7)
    cut_error = _error(pruned, original, held_out)
    report = reconstruct_pruned(pruned, original, ATTENTIONS, FFNS, _token_ids(128, 16, seed=3),
                                pad_token_id=0)
    assert report is not None
    assert list(report["layers"]) == hf_output_blocks(pruned, ATTENTIONS, FFNS) == [
        "model.encoder.layer.0.attention.output", "model.encoder.layer.0.output",
        "model.encoder.layer.1.attention.output", "model.encoder.layer.1.output"]
    assert all(e["after"] < e["before"] for e in report["layers"].values())
    assert report["tokens"] < 128 * 16  # padding is not counted
    assert _error(pruned, original, held_out) < 0.5 * cut_error


def test_padding_never_changes_the_fit(tiny_bert: Path) -> None:
    """Fitting sequence by sequence (no padding in any batch) or in padded batches gives the
    same weights: only real tokens count."""
    original, pruned = _half_cut(tiny_bert)
    ids = _token_ids(8, 16, seed=5)
    one_by_one = copy.deepcopy(pruned)
    blocks = hf_output_blocks(pruned, ATTENTIONS, FFNS)
    reconstruct_outputs(pruned, original, blocks, ids, lambda b: b != 0, batch_size=8)
    reconstruct_outputs(one_by_one, original, blocks, ids, lambda b: b != 0, batch_size=1)
    for block in blocks:
        torch.testing.assert_close(one_by_one.get_submodule(block).dense.weight,
                                   pruned.get_submodule(block).dense.weight,
                                   atol=1e-4, rtol=1e-3)


def test_nothing_to_refit_without_a_bert_layout(tiny_bert: Path) -> None:
    original, pruned = _half_cut(tiny_bert)
    assert reconstruct_pruned(pruned, original, [], [], _token_ids(4, 8, 1), 0) is None
    assert reconstruct_pruned(pruned, original, ATTENTIONS, FFNS,
                              _token_ids(4, 8, 1)[:0], 0) is None


def test_a_recipe_can_turn_reconstruction_off(tiny_bert: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "train.npz", input_ids=_token_ids(32, 12, 1).numpy())
    np.savez(tmp_path / "test.npz", input_ids=_token_ids(8, 12, 2).numpy())
    reports = []
    for reconstruct in (True, False):
        workspace = open_workspace(str(tiny_bert))
        workspace.plan.set_spec("model.encoder.layer.0",
                                LayerSpec(sparsity=0.5, granularity="channels"))
        recipe = Recipe.model_validate({
            "schema_version": 1, "prune": {"reconstruct": reconstruct},
            "data": {"source": "arrays", "path": "train.npz", "test_path": "test.npz",
                     "calibration_samples": 16},
            "train": {"epochs": 0}, "export": {"latency_batch": 2, "latency_repeats": 1}})
        events = run_workspace(workspace, recipe, tmp_path / str(reconstruct), CancelToken(),
                               base_dir=tmp_path)
        reports.append(next(e for e in events if isinstance(e, Result)).report)
    on, off = reports
    assert list(on["stages"]["prune"]["reconstruct"]["layers"]) == [
        "model.encoder.layer.0.attention.output", "model.encoder.layer.0.output"]
    assert "reconstruct" not in off["stages"]["prune"]
    assert on["compressed"]["metric"]["value"] > off["compressed"]["metric"]["value"]


def test_cancelling_stops_the_refit_and_leaves_the_weights(tiny_bert: Path) -> None:
    original, pruned = _half_cut(tiny_bert)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    token = CancelToken()
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 2:
            token.cancel()
        token.check()

    with pytest.raises(JobCancelled):
        reconstruct_pruned(pruned, original, ATTENTIONS, FFNS, _token_ids(128, 16, seed=3),
                           pad_token_id=0, check=check)
    assert len(calls) == 2  # stopped within the first block's batches
    assert all(torch.equal(before[k], v) for k, v in pruned.state_dict().items())
