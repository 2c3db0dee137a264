"""Transformers through the engine and onnxruntime: export with free batch and sequence axes,
a recipe that cuts heads and FFN width, recovers without labels and quantizes to int8."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from studio.core.engine.run import run_workspace
from studio.core.export.measure import count_ops, run_onnx
from studio.core.export.onnx_export import export_onnx
from studio.core.graph.onnx_tree import build_onnx_tree
from studio.core.jobs import CancelToken, Log, Result
from studio.core.methods.pruning import apply_plan_pruning
from studio.core.methods.quantization.ort_plan import apply_quant_plan
from studio.core.plan.ort_rules import plan_to_ort, resolved_by_name
from studio.core.plan.plan import Plan
from studio.core.plan.recipe import Recipe
from studio.core.plan.spec import LayerSpec
from studio.core.workspace import open_workspace

pytest.importorskip("transformers")

SHAPES = ((1, 5), (3, 17))


def _token_ids(batch: int, length: int, seed: int) -> torch.Tensor:
    """Random ids with a random amount of padding (id 0) at the end of each row."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 100, (batch, length), generator=generator)
    for row in range(batch):
        ids[row, int(torch.randint(2, length + 1, (1,), generator=generator)):] = 0
    ids[:, 0] = 2
    return ids


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).mean())


def test_pruned_export_runs_at_any_batch_and_length_like_torch(tiny_bert: Path,
                                                               tmp_path: Path) -> None:
    workspace = open_workspace(str(tiny_bert))
    workspace.plan.set_spec("", LayerSpec(sparsity=0.5, granularity="channels"))
    model = copy.deepcopy(workspace.loaded.module)
    apply_plan_pruning(model, workspace.tree, workspace.plan.resolve(workspace.tree),
                       workspace.example.make_tensor())
    path = export_onnx(model, workspace.example.make_tensor(), tmp_path / "pruned.onnx")
    dims = [d.dim_param for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]
    for seed, (batch, length) in enumerate(SHAPES):
        ids = _token_ids(batch, length, seed)
        with torch.no_grad():
            expected = model(ids).numpy()
        np.testing.assert_allclose(run_onnx(path, ids), expected, atol=1e-5)


def test_hidden_state_outputs_keep_a_free_sequence_axis(tmp_path: Path) -> None:
    from tests.core.transformers.conftest import save_tiny_bert

    workspace = open_workspace(str(save_tiny_bert(tmp_path / "plain",
                                                  sentence_transformer=False)))
    path = export_onnx(workspace.loaded.module, workspace.example.make_tensor(),
                       tmp_path / "plain.onnx")
    ids = _token_ids(2, 9, 0)
    assert run_onnx(path, ids).shape == (2, 9, 32)


def test_int8_dynamic_per_channel_and_weight_only_from_a_plan(tiny_bert: Path,
                                                              tmp_path: Path) -> None:
    workspace = open_workspace(str(tiny_bert))
    plan = Plan({"": LayerSpec(weight_bits="int8")})
    float_path = export_onnx(workspace.loaded.module, workspace.example.make_tensor(),
                             tmp_path / "float.onnx")
    tree = build_onnx_tree(onnx.load(str(float_path)), "float")
    resolved = resolved_by_name(workspace.tree, plan)
    ids = _token_ids(4, 12, 3)
    reference = run_onnx(float_path, ids)
    dynamic = plan_to_ort(tree, resolved)
    assert dynamic.mode == "dynamic" and not dynamic.matmul_nbits
    int8 = apply_quant_plan(float_path, tmp_path / "int8.onnx", dynamic, per_channel=True)
    assert count_ops(int8).get("MatMulInteger", 0) >= 12  # q, k, v, out, FFN x2, 2 layers
    weight_only = plan_to_ort(tree, resolved, weight_only=True)
    assert set(weight_only.matmul_nbits.values()) == {8}
    nbits = apply_quant_plan(float_path, tmp_path / "w8.onnx", weight_only)
    assert count_ops(nbits).get("MatMulNBits", 0) >= 12
    assert "MatMulInteger" not in count_ops(nbits)
    for path in (int8, nbits):
        assert _cosine(run_onnx(path, ids), reference) > 0.99
        assert path.stat().st_size < float_path.stat().st_size


def test_a_recipe_cuts_heads_and_ffn_recovers_without_labels_and_quantizes(
        tiny_bert: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "train.npz", input_ids=_token_ids(48, 12, 1).numpy())
    np.savez(tmp_path / "test.npz", input_ids=_token_ids(16, 12, 2).numpy())
    workspace = open_workspace(str(tiny_bert))
    workspace.plan.set_spec("", LayerSpec(weight_bits="int8"))
    for block in range(2):
        workspace.plan.set_spec(f"model.encoder.layer.{block}",
                                LayerSpec(sparsity=0.5, granularity="channels"))
    recipe = Recipe.model_validate({
        "schema_version": 1,
        "data": {"source": "arrays", "path": "train.npz", "test_path": "test.npz",
                 "calibration_samples": 16},
        "train": {"epochs": 1, "batch_size": 16, "lr": 1e-3},
        "quantize": {"per_channel": True},
        "export": {"latency_batch": 4, "latency_repeats": 2},
    })
    events = list(run_workspace(workspace, recipe, tmp_path / "out", CancelToken(),
                                base_dir=tmp_path))
    report = next(e for e in events if isinstance(e, Result)).report
    assert report["data"]["labelled"] is False
    assert report["compressed"]["metric"]["name"] == "cosine"
    heads = report["stages"]["prune"]["transformer"]["heads"]["changed"]
    assert heads == {f"model.encoder.layer.{i}.attention": [4, 2] for i in range(2)}
    rebuilt = report["stages"]["prune"]["reconstruct"]["layers"]
    assert list(rebuilt) == [f"model.encoder.layer.{i}.{part}output" for i in range(2)
                             for part in ("attention.", "")]
    assert all(e["after"] < e["before"] for e in rebuilt.values())
    assert any(isinstance(e, Log) and e.message.startswith("Reconstruction: re-fitted 4 ")
               for e in events)
    assert report["stages"]["recover"]["kind"] == "match"
    assert any(isinstance(e, Log) and "hidden states of 2 encoder blocks" in e.message
               for e in events)
    assert report["stages"]["quantize"]["mode"] == "dynamic"
    model_path = Path(report["paths"]["model"])
    assert "MatMulInteger" in count_ops(model_path)
    assert report["compressed"]["onnx_bytes"] < 0.5 * report["baseline"]["onnx_bytes"]
    for seed, (batch, length) in enumerate(SHAPES):
        ids = _token_ids(batch, length, seed)
        outputs = run_onnx(model_path, ids)
        assert outputs.shape == (batch, 32)
        np.testing.assert_allclose(np.linalg.norm(outputs, axis=1), 1.0, atol=1e-3)
