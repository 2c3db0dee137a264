"""The report's plain-word notes name the task's metric and read its direction right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from studio.core.engine.notes import drop_advice, honesty_notes
from studio.core.engine.run import run_recipe
from studio.core.jobs import CancelToken, Result
from studio.core.plan.recipe import Recipe


def _figures(metric: str, value: float) -> dict:
    return {"metric": {"name": metric, "value": value}, "onnx_bytes": 100, "zip_bytes": 90,
            "latency_ms": {"batch_1": 1.0}}


def test_a_drop_is_named_by_the_metric() -> None:
    notes = honesty_notes(_figures("cosine", 1.0), _figures("cosine", 0.95), 0, False)
    assert any(n.startswith("Cosine agreement with the original dropped 5.0 points")
               for n in notes)
    accuracy = honesty_notes(_figures("accuracy", 0.98), _figures("accuracy", 0.90), 0, False)
    assert any(n.startswith("Accuracy dropped 8.0 points") for n in accuracy)


def _dropped(notes: list[str]) -> list[str]:
    return [note for note in notes if "dropped" in note]


def test_no_drop_note_for_a_gain_or_for_mse() -> None:
    gain = honesty_notes(_figures("accuracy", 0.90), _figures("accuracy", 0.95), 0, False)
    assert not _dropped(gain)
    assert not _dropped(honesty_notes(_figures("mse", 0.0), _figures("mse", 0.5), 0, False))


def test_advice_fits_what_the_model_allows() -> None:
    trainable = _dropped(honesty_notes(_figures("accuracy", 0.98), _figures("accuracy", 0.60),
                                       0, True))
    assert "fine-tuning" in trainable[0]
    onnx_only = drop_advice(can_train=False, dynamic_convs=True,
                            quantized_layers=["/a/Conv", "/b/Conv", "/c/Gemm"])
    notes = _dropped(honesty_notes(_figures("cosine", 1.0), _figures("cosine", 0.58), 0, True,
                                   onnx_only))
    assert "fine-tun" not in notes[0] and "distill" not in notes[0]
    assert "static int8" in notes[0] and "'/a/Conv', '/c/Gemm'" in notes[0]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_conv_torch_model_after_dynamic_int8_is_advised_what_its_path_can_do(
        tmp_path: Path) -> None:
    """A real torch run: dynamic int8 gives each batch's activations one range, which a few
    large inputs stretch, so the convolutions lose most of their signal; the note names static
    int8, the torch layers to keep float, QAT and fine-tuning (the torch path can train)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 4, 3, padding=1), nn.Flatten()).eval()
    torch.save(model, tmp_path / "convs.pt")
    images = np.random.default_rng(0).normal(size=(40, 3, 6, 6)).astype(np.float32)
    images[::4] *= 1000.0  # every batch holds large samples: the small ones fall to zero
    np.savez(tmp_path / "images.npz", x=images)
    recipe = Recipe.model_validate({
        "schema_version": 1, "model": {"path": str(tmp_path / "convs.pt")},
        "example_input": {"shape": [1, 3, 6, 6]},
        "plan": {"defaults": {"weight_bits": "int8"}}, "train": {"epochs": 0},
        "data": {"source": "arrays", "path": "images.npz", "calibration_samples": 8},
        "quantize": {"int8_path": "dynamic"},
        "export": {"latency_batch": 4, "latency_repeats": 1}})
    events = run_recipe(recipe, tmp_path, tmp_path / "out", CancelToken(), trust=True)
    report = next(e for e in events if isinstance(e, Result)).report
    assert report["stages"]["quantize"]["mode"] == "dynamic"
    assert report["compressed"]["metric"]["name"] == "cosine"
    note = _dropped(report["notes"])[0]
    assert "static int8 for the convolutions" in note
    assert "exclude: true in plan.layers; the first and last often are: '0', '4'" in note
    assert "quantization-aware training (quantize: {qat: true}" in note
    assert "more fine-tuning epochs" in note
