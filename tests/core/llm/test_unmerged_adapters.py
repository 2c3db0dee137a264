"""QLoRA-style recovery kept unmerged (``adapters: {merge: false}``) on a tiny LLaMA: the base
is pruned 2:4 and put on its int4 grid by GPTQ before the adapters train, the file stores those
integers as MatMulNBits with the adapters beside them as float matmuls, and onnxruntime
computes what the torch model computed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from studio.cli.main import main
from studio.core.export.measure import count_ops
from studio.core.methods.pruning.nm import follows_nm

from .conftest import TEXT

RECIPE = """schema_version: 1
model: {{path: {model}}}
plan:
  layers:
    model.model.layers: {{sparsity: 0.5, granularity: "2:4", weight_bits: int4,
                         group_size: 16, adapter_rank: 4}}
    model.lm_head: {{adapter: none}}
data: {{source: text, path: text.txt, block_length: 24, calibration_samples: 4}}
train: {{epochs: 1, batch_size: 4, lr: 0.01}}
prune: {{importance: sparsegpt}}
quantize: {{weight_method: gptq}}
adapters: {{merge: {merge}}}
export: {{latency_batch: 2, latency_repeats: 1}}
"""
LINEARS = 14  # 2 blocks x (q, k, v, o, gate, up, down)


def _nibbles(packed: np.ndarray) -> np.ndarray:
    return np.stack([packed & 0xF, packed >> 4], -1).reshape(packed.shape[0], -1)


def _stored_weight(model: onnx.ModelProto, node: onnx.NodeProto) -> torch.Tensor:
    """The [N, K] weight a 4-bit asymmetric MatMulNBits node stores."""
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    attributes = {a.name: a.i for a in node.attribute}
    q = _nibbles(arrays[node.input[1]].reshape(attributes["N"], -1)).astype(np.float32)
    scales = arrays[node.input[2]].reshape(attributes["N"], -1)
    zeros = _nibbles(arrays[node.input[3]])[:, :scales.shape[1]].astype(np.float32)
    group = attributes["block_size"]
    weight = np.repeat(scales, group, 1) * (q - np.repeat(zeros, group, 1))
    return torch.from_numpy(weight[:, :attributes["K"]])


def test_unmerged_adapters_sit_beside_the_int4_base_they_trained_over(
        tiny_llama: Path, tmp_path: Path) -> None:
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(model=tiny_llama, merge="false"))
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    stages = report["stages"]
    assert stages["gptq"]["before_adapters"] is True and stages["gptq"]["layers"] == LINEARS
    assert stages["adapters"]["merged"] is False
    assert sorted(stages["quantize"]["gptq"]) == sorted(stages["adapters"]["layers"])
    path = Path(report["paths"]["model"])
    ops = count_ops(path)
    assert ops["MatMulNBits"] == LINEARS
    model = onnx.load(str(path))
    initializers = {t.name for t in model.graph.initializer}
    adapters = [n for n in model.graph.node
                if n.op_type == "MatMul" and n.input[1] in initializers]
    assert len(adapters) == 2 * LINEARS + 1  # A and B of each adapter, and the float LM head
    for node in (n for n in model.graph.node if n.op_type == "MatMulNBits"):
        assert follows_nm(_stored_weight(model, node), 2, 4)  # 2:4 kept on the int4 grid
    # the file computes what the torch model with its adapters computed
    assert report["compressed"]["metric"]["value"] == pytest.approx(
        stages["adapters"]["unmerged_metric"]["value"], rel=1e-4)
