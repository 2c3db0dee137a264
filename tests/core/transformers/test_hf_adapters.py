"""A tiny BERT recovered with LoRA through the engine: heads cut, the adapters trained by
matching the uncompressed model (the base frozen), merged, and the exported file equal to torch
with the adapters; the adapter is also written alone in PEFT format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from studio.core.engine.run import run_workspace
from studio.core.jobs import CancelToken, Log, Result
from studio.core.plan.recipe import Recipe
from studio.core.plan.spec import LayerSpec
from studio.core.workspace import open_workspace
from tests.core.transformers.test_hf_engine import _token_ids

pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                                        "ignore::FutureWarning")


def test_lora_recovers_a_pruned_bert_and_merges_before_export(tiny_bert: Path,
                                                             tmp_path: Path) -> None:
    np.savez(tmp_path / "train.npz", input_ids=_token_ids(48, 12, 1).numpy())
    np.savez(tmp_path / "test.npz", input_ids=_token_ids(16, 12, 2).numpy())
    workspace = open_workspace(str(tiny_bert))
    workspace.plan.set_spec("", LayerSpec(adapter_rank=4))
    workspace.plan.set_spec("model.encoder.layer.0", LayerSpec(sparsity=0.5,
                                                               granularity="channels"))
    recipe = Recipe.model_validate({
        "schema_version": 1,
        "data": {"source": "arrays", "path": "train.npz", "test_path": "test.npz",
                 "calibration_samples": 16},
        "train": {"epochs": 2, "batch_size": 16, "lr": 5e-3},
        "adapters": {},
        "export": {"latency_batch": 4, "latency_repeats": 1},
    })
    events = list(run_workspace(workspace, recipe, tmp_path / "out", CancelToken(),
                                base_dir=tmp_path))
    report = next(e for e in events if isinstance(e, Result)).report
    adapters = report["stages"]["adapters"]
    assert adapters["kind"] == "lora" and len(adapters["layers"]) == 2 * 6
    assert {v["rank"] for v in adapters["layers"].values()} == {4}
    assert adapters["trainable_params"] < 0.2 * adapters["base_params"]
    assert adapters["merge_max_abs_diff"] < 1e-5
    assert report["stages"]["recover"]["kind"] == "match"
    assert any(isinstance(e, Log) and e.message.startswith("Adapters: LoRA r=4 on 12 layers")
               for e in events)
    # The merged export in onnxruntime equals the merged torch model, which equals torch
    # with the adapters (merge_max_abs_diff above).
    assert report["compressed"]["parity"]["max_abs_diff"] < 1e-4
    assert report["compressed"]["onnx_bytes"] < report["baseline"]["onnx_bytes"]
    out = Path(report["paths"]["adapter"])
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert (out / "adapter_model.safetensors").stat().st_size > 0
    assert abs(adapters["merged_metric"]["value"]
               - report["stages"]["recover"]["torch_metric"]["value"]) < 1e-4
