"""SparseGPT / Wanda pruning and GPTQ / HQQ int4 through the engine on a tiny BERT folder:
the steps run from recipe settings, the file holds MatMulNBits nodes whose bytes match the
plan's estimate, and onnxruntime computes what the fake-quantized torch model computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from studio.core.engine.run import run_workspace
from studio.core.errors import StudioError
from studio.core.export.measure import count_ops, run_onnx
from studio.core.jobs import CancelToken, Result
from studio.core.methods.layerwise.apply import QuantTarget, quantize_layerwise
from studio.core.methods.pruning.nm import follows_nm
from studio.core.plan.estimate import estimate, nbits_bytes
from studio.core.plan.recipe import Recipe
from studio.core.plan.spec import LayerSpec
from studio.core.workspace import open_recipe_workspace, open_workspace

LINEARS = [f"model.encoder.layer.{b}.{part}" for b in range(2)
           for part in ("attention.self.query", "attention.self.key", "attention.self.value",
                        "attention.output.dense", "intermediate.dense", "output.dense")]


def _ids(count: int, seed: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    ids = generator.integers(4, 100, (count, 12))
    ids[:, 0] = 2
    return ids


def _run(tiny_bert: Path, tmp_path: Path, specs: dict[str, LayerSpec], prune: dict,
         quantize: dict) -> tuple[dict, object]:
    np.savez(tmp_path / "train.npz", input_ids=_ids(32, 1))
    np.savez(tmp_path / "test.npz", input_ids=_ids(8, 2))
    workspace = open_workspace(str(tiny_bert))
    for name, spec in specs.items():
        workspace.plan.set_spec(name, spec)
    recipe = Recipe.model_validate({
        "schema_version": 1,
        "data": {"source": "arrays", "path": "train.npz", "test_path": "test.npz",
                 "calibration_samples": 32},
        "train": {"epochs": 0}, "prune": prune, "quantize": quantize,
        "export": {"latency_batch": 2, "latency_repeats": 1}})
    events = list(run_workspace(workspace, recipe, tmp_path / "out", CancelToken(),
                                base_dir=tmp_path))
    return next(e for e in events if isinstance(e, Result)).report, workspace


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize(("importance", "granularity"), [("sparsegpt", "unstructured"),
                                                         ("wanda", "2:4")])
def test_layerwise_pruning_runs_from_the_recipe(tiny_bert: Path, tmp_path: Path,
                                                importance: str, granularity: str) -> None:
    report, _ = _run(tiny_bert, tmp_path,
                     {"model.encoder": LayerSpec(sparsity=0.5, granularity=granularity)},
                     {"importance": importance}, {})
    stage = report["stages"]["layerwise_prune"]
    assert stage["method"] == importance and stage["samples"] == 32
    assert sorted(stage["sparsity"]) == sorted(LINEARS)
    assert all(abs(s - 0.5) < 0.01 for s in stage["sparsity"].values())
    assert ("output_error" in stage) == (importance == "sparsegpt")
    weights = [w for w in _weights(Path(report["paths"]["model"])).values()
               if w.ndim == 2 and w.shape == (32, 32)]  # the attention projections
    assert len(weights) == 8
    for weight in weights:
        assert abs(float((weight == 0).mean()) - 0.5) < 0.02
        if granularity == "2:4":
            assert follows_nm(torch.from_numpy(weight.T.copy()), 2, 4)


def test_gptq_int4_is_written_as_matmul_nbits_of_the_estimated_size(
        tiny_bert: Path, tmp_path: Path) -> None:
    specs = {"model.encoder": LayerSpec(weight_bits="int4", group_size=16)}
    report, workspace = _run(tiny_bert, tmp_path, specs, {},
                             {"weight_method": "gptq", "symmetric": False})
    path = Path(report["paths"]["model"])
    assert report["stages"]["gptq"]["layers"] == 12
    assert sorted(report["stages"]["quantize"]["gptq"]) == sorted(LINEARS)
    assert count_ops(path)["MatMulNBits"] == 12
    model = onnx.load(str(path))
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert not [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")
                and n.input[1] in initializers]  # no float weight left
    stored = sum(sum(initializers[i].nbytes for i in node.input[1:] if i in initializers)
                 for node in model.graph.node if node.op_type == "MatMulNBits")
    expected = sum(nbits_bytes(*initializers[n.input[1]].shape[:1],
                               next(a.i for a in n.attribute if a.name == "K"), 4, 16, False)
                   for n in model.graph.node if n.op_type == "MatMulNBits")
    assert stored == expected
    # The plan's estimate counts the same bytes for the Linear layers' weights.
    tree = workspace.tree
    resolved = workspace.plan.resolve(tree)
    after = estimate(tree, resolved).after.nbytes
    float_weights = sum(node.weight_params * 4 for node in tree.nodes
                        if node.name in LINEARS)
    assert estimate(tree, resolved).before.nbytes - after == float_weights - stored


def test_gptq_file_in_onnxruntime_matches_torch_fake_quant(tiny_bert: Path,
                                                          tmp_path: Path) -> None:
    report, workspace = _run(tiny_bert, tmp_path,
                             {"model.encoder": LayerSpec(weight_bits="int4", group_size=16)},
                             {}, {"weight_method": "gptq", "symmetric": True})
    module = workspace.loaded.module
    ids = torch.from_numpy(_ids(32, 1))
    assert report["stages"]["gptq"]["act_order"] is True  # the default
    quantize_layerwise(module, ids, {n: QuantTarget(4, 16) for n in LINEARS}, "gptq",
                       symmetric=True, act_order=True)
    test = torch.from_numpy(_ids(4, 5))
    with torch.no_grad():
        expected = module(test)
    expected = (expected[0] if isinstance(expected, tuple) else expected).numpy()
    got = run_onnx(Path(report["paths"]["model"]), test)
    np.testing.assert_allclose(got, expected, atol=2e-4)


def test_hqq_and_per_layer_group_sizes_go_through_onnxruntime(tiny_bert: Path,
                                                              tmp_path: Path) -> None:
    specs = {"model.encoder": LayerSpec(weight_bits="int4", group_size=32),
             "model.encoder.layer.1": LayerSpec(group_size=16)}
    report, _ = _run(tiny_bert, tmp_path, specs, {}, {"weight_method": "hqq"})
    model = onnx.load(report["paths"]["model"])
    blocks = sorted({a.i for n in model.graph.node if n.op_type == "MatMulNBits"
                     for a in n.attribute if a.name == "block_size"})
    assert blocks == [16, 32]
    assert report["compressed"]["metric"]["value"] > 0.9  # cosine to the float model


def test_layerwise_pruning_of_a_model_without_blocks_is_refused_in_words(
        tmp_path: Path) -> None:
    recipe = Recipe.model_validate({"schema_version": 1, "model": {"path": "demo"},
                                    "plan": {"defaults": {"sparsity": 0.5}},
                                    "data": {"source": "demo", "calibration_samples": 16},
                                    "train": {"epochs": 0}, "prune": {"importance": "wanda"}})
    workspace = open_recipe_workspace(recipe, tmp_path)
    with pytest.raises(StudioError, match="need a transformer with a list of repeated blocks"):
        list(run_workspace(workspace, recipe, tmp_path / "out", CancelToken()))


def test_an_onnx_model_refuses_gptq_and_sparsegpt_by_name(tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval(),
                      (torch.randn(1, 1, 28, 28),), str(path), dynamo=False)
    recipe = Recipe.model_validate({
        "schema_version": 1, "model": {"path": str(path)},
        "plan": {"defaults": {"sparsity": 0.5, "weight_bits": "int4"}},
        "data": {"source": "demo", "calibration_samples": 16}, "train": {"epochs": 0},
        "prune": {"importance": "sparsegpt"}, "quantize": {"weight_method": "gptq"}})
    workspace = open_recipe_workspace(recipe, tmp_path)
    with pytest.raises(StudioError, match=r"prune\.importance: sparsegpt.*quantize\."
                                          r"weight_method: gptq"):
        list(run_workspace(workspace, recipe, tmp_path / "out", CancelToken()))


def test_a_group_size_that_is_not_a_power_of_two_is_refused_in_words() -> None:
    with pytest.raises(ValueError, match="group size 100: use a power of two"):
        LayerSpec(group_size=100)


def test_drop_blocks_removes_the_least_influential_block_then_prunes_the_rest(
        tiny_bert: Path, tmp_path: Path) -> None:
    report, _ = _run(tiny_bert, tmp_path,
                     {"model.encoder": LayerSpec(sparsity=0.5)},
                     {"drop_blocks": 1, "importance": "sparsegpt"}, {})
    dropped = report["stages"]["drop_blocks"]
    influence = dropped["influence"]
    assert dropped["dropped"] == [min(influence, key=influence.__getitem__)]
    assert dropped["params_after"] < dropped["params_before"]
    kept = next(n for n in influence if n not in dropped["dropped"])
    assert sorted(report["stages"]["layerwise_prune"]["sparsity"]) == sorted(
        n for n in LINEARS if n.startswith(f"{kept}."))
    assert report["compressed"]["onnx_bytes"] < report["baseline"]["onnx_bytes"]


def test_dropping_every_block_is_refused_in_words(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(StudioError, match=r"prune\.drop_blocks: 2 of the model's 2 blocks"):
        _run(tiny_bert, tmp_path, {}, {"drop_blocks": 2}, {})
