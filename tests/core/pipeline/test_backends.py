"""Backends and formats: a loaded model says what can be done with it (capabilities), the run
picks its backend and steps from them, and a file is read by the format its extension or, when
that is wrong, its content names."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from studio.core.models.loader import MODEL_SUFFIXES, open_model
from studio.core.pipeline.pipeline import backend_class
from studio.core.pipeline.registry import STEPS, steps_for
from studio.core.workspace import open_workspace

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def tiny_onnx(tmp_path):
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval(),
                      (torch.randn(1, 4),), str(path), dynamo=False)
    return path


def test_capabilities_pick_the_backend_and_its_steps(tiny_onnx):
    demo, onnx_file = open_workspace("demo"), open_workspace(str(tiny_onnx))
    assert demo.loaded.capabilities.can_train and demo.loaded.capabilities.can_sweep
    caps = onnx_file.loaded.capabilities
    assert (caps.backend, caps.can_train, caps.can_sweep) == ("onnx", False, False)
    torch_steps = [s.name for s in steps_for(backend_class(demo).provides)]
    onnx_steps = [s.name for s in steps_for(backend_class(onnx_file).provides)]
    assert torch_steps == ["drop_blocks", "prune", "layerwise_prune", "bn_recalibration", "qat",
                           "adapters", "recover", "merge_adapters", "embedding_quantize", "gptq",
                           "quantize",
                           "kv_cache"]
    assert onnx_steps == ["repair", "prune", "quantize"]
    runnable = [*steps_for(backend_class(demo).provides),
                *steps_for(backend_class(onnx_file).provides)]
    assert all(step in runnable for step in STEPS)  # every registered step runs somewhere


def test_a_renamed_file_is_read_by_its_content(tiny_onnx, tmp_path):
    assert set(MODEL_SUFFIXES) == {".onnx", ".safetensors", ".pt2", ".pt", ".pth", ".gguf"}
    renamed = tmp_path / "model.bin"
    shutil.copy(tiny_onnx, renamed)
    loaded = open_model(renamed)
    assert loaded.format == "onnx" and loaded.capabilities.backend == "onnx"
