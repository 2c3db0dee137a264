"""int4 token embeddings in the ONNX file: a GatherBlockQuantized lookup and, for a tied LM
head, a MatMulNBits over the same integers, computing what the fake-quantized torch model
computes, in exactly the bytes the plan's estimate counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from studio.cli.main import main
from studio.core.export.measure import count_ops, run_onnx
from studio.core.export.onnx_export import export_onnx
from studio.core.methods.quantization.embedding_nbits import (
    quantize_embedding,
    write_embedding_nbits,
)
from studio.core.models.loader import open_model
from studio.core.plan.estimate import estimate, nbits_bytes
from studio.core.plan.spec import LayerSpec
from studio.core.workspace import open_workspace

from .conftest import TEXT, VOCAB


def _lookup_tables(model: onnx.ModelProto) -> dict[str, int]:
    """Initializers the GatherBlockQuantized nodes read (their integers through a Reshape,
    scales, zero points) -> bytes."""
    initializers = {t.name: numpy_helper.to_array(t).nbytes for t in model.graph.initializer}
    reshaped = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Reshape"}
    names = {name for n in model.graph.node if n.op_type == "GatherBlockQuantized"
             for name in (reshaped.get(n.input[0], n.input[0]), *n.input[2:])}
    return {name: initializers[name] for name in names}


@pytest.mark.parametrize(("bits", "group", "symmetric"), [(4, 16, False), (4, 64, True),
                                                         (8, 32, False)])
def test_tied_embedding_is_stored_once_and_matches_torch(
        tiny_gpt2: Path, tmp_path: Path, bits: int, group: int, symmetric: bool) -> None:
    module = open_model(tiny_gpt2).module
    assert module is not None
    embedding = module.get_submodule("model.transformer.wte")
    assert module.get_submodule("model.lm_head").weight is embedding.weight  # tied
    weight = quantize_embedding(embedding, bits, group, symmetric)  # 32 wide: 64 pads a block
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module(ids).numpy()
    path = export_onnx(module, ids[:1], tmp_path / "m.onnx", opset=18)
    model = onnx.load(str(path))
    written = write_embedding_nbits(model, {"model.transformer.wte": weight})
    assert len(written["model.transformer.wte"]) >= 2
    onnx.save(model, str(path))
    ops = count_ops(path)
    assert ops["GatherBlockQuantized"] == 1 and ops["MatMulNBits"] == 1
    assert ops.get("Slice", 0) >= (1 if group == 64 else 0)
    # no float copy of the table is left; the integers are stored once for both nodes
    assert not [t for t in model.graph.initializer if tuple(t.dims) == (VOCAB, 32)]
    tables = _lookup_tables(model)
    assert sum(tables.values()) == nbits_bytes(VOCAB, 32, bits, group, symmetric)
    head = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
    assert set(head.input[1:]) == set(tables)
    got = run_onnx(path, ids.numpy(), batch_size=2)
    assert np.abs(got - expected).max() < 1e-4 * max(1.0, float(np.abs(expected).max()))


def test_settings_onnxruntime_cannot_look_up_are_refused(tiny_gpt2: Path) -> None:
    table = torch.nn.Embedding(8, 32)
    with pytest.raises(ValueError, match="power of two"):
        quantize_embedding(table, 4, 24)
    with pytest.raises(ValueError, match="int4 and int8 only"):
        quantize_embedding(table, 2, 16)
    # the plan's estimate keeps an int2 table float, as the run does
    workspace = open_workspace(str(tiny_gpt2))
    plan, tree = workspace.plan, workspace.tree
    plan.set_spec("model.transformer.wte", LayerSpec(exclude=True))
    floats = estimate(tree, plan.resolve(tree)).after.nbytes
    plan.set_spec("model.transformer.wte", LayerSpec(weight_bits="int2"))
    assert estimate(tree, plan.resolve(tree)).after.nbytes == floats
    plan.set_spec("model.transformer.wte", LayerSpec(weight_bits="int4", group_size=16))
    assert estimate(tree, plan.resolve(tree)).after.nbytes < floats


RECIPE = """schema_version: 1
model: {{path: {model}}}
plan:
  layers:
    model: {{weight_bits: int4, group_size: 16}}
data: {{source: text, path: text.txt, block_length: 24, calibration_samples: 4}}
train: {{epochs: 0}}
quantize: {{weight_method: {method}}}
export: {{latency_batch: 2, latency_repeats: 1}}
"""
TABLES = {"model.transformer.wte": (VOCAB, 32), "model.transformer.wpe": (64, 32)}


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_plan_int4_on_the_whole_model_stores_the_tables_as_estimated(
        tiny_gpt2: Path, tmp_path: Path, method: str) -> None:
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(model=tiny_gpt2, method=method))
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    layers = report["stages"]["embedding_quantize"]["layers"]
    assert sorted(layers) == sorted(TABLES)
    assert layers["model.transformer.wte"]["tied_heads"] == ["model.lm_head"]
    path = Path(report["paths"]["model"])
    ops = count_ops(path)
    assert ops["GatherBlockQuantized"] == 2
    assert ops["MatMulNBits"] == 9  # 8 block Linears and the tied head
    model = onnx.load(str(path))
    lookups = sum(nbits_bytes(*shape, 4, 16, False) for shape in TABLES.values())
    assert sum(_lookup_tables(model).values()) == lookups
    # the plan's estimate counts exactly those bytes for the two tables
    workspace = open_workspace(str(tiny_gpt2))
    workspace.plan.set_spec("model", LayerSpec(weight_bits="int4", group_size=16))
    quantized = estimate(workspace.tree, workspace.plan.resolve(workspace.tree)).after.nbytes
    for name in TABLES:
        workspace.plan.set_spec(name, LayerSpec(exclude=True))
    kept = estimate(workspace.tree, workspace.plan.resolve(workspace.tree)).after.nbytes
    floats = sum(rows * width * 4 for rows, width in TABLES.values())
    assert kept - quantized == floats - lookups
    assert report["compressed"]["metric"]["value"] < 2 * report["baseline"]["metric"]["value"]
