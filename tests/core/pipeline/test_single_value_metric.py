"""A model with one value per sample (a voice-activity model's speech probability, [N, 1]):
per-sample cosine of one value is only its sign, so ``auto`` on unlabelled data measures MSE,
and cosine asked for is refused before any work."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from studio.core.engine.run import run_recipe
from studio.core.errors import StudioError
from studio.core.jobs import CancelToken, Log, Result
from studio.core.plan.recipe import Recipe

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Features in, one speech probability per sample out, as a voice-activity model gives:
    a whole pickled module (opened trusted) and its ONNX export, beside unlabelled features."""
    folder = tmp_path_factory.mktemp("vad")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid()).eval()
    example = torch.randn(2, 16)
    torch.save(model, folder / "vad.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(folder / "vad.onnx"), dynamo=False,
                          opset_version=17, input_names=["features"], output_names=["speech"],
                          dynamic_axes={"features": {0: "batch"}, "speech": {0: "batch"}})
    np.savez(folder / "features.npz",
             x=np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32))
    return folder


def _recipe(model: Path, **data: object) -> Recipe:
    """Half of every layer's weights pruned and nothing fine-tuned: a damaged model."""
    return Recipe.model_validate({
        "schema_version": 1, "model": {"path": str(model)},
        "example_input": {"shape": [1, 16]},
        "plan": {"defaults": {"sparsity": 0.5}},
        "train": {"epochs": 0},
        "data": {"source": "arrays", "path": "features.npz", "calibration_samples": 8} | data,
        "export": {"latency_batch": 4, "latency_repeats": 1},
    })


@pytest.mark.parametrize("name", ["vad.pt", "vad.onnx"])
def test_auto_measures_mse_and_a_damaged_model_reads_worse(files: Path, tmp_path: Path,
                                                           name: str) -> None:
    events = list(run_recipe(_recipe(files / name), files, tmp_path / "out", CancelToken(),
                             trust=True))
    report = next(e for e in events if isinstance(e, Result)).report
    said = [e.message for e in events if isinstance(e, Log) and e.message.startswith("Data:")]
    assert "metric mse (auto: unlabelled data, and output" in said[0]
    assert "gives one value per sample, whose cosine would be only its sign" in said[0]
    assert report["data"]["metric"] == "mse"
    assert "one value per sample" in report["data"]["metric_reason"]
    baseline, compressed = report["baseline"]["metric"], report["compressed"]["metric"]
    assert (baseline["name"], compressed["name"]) == ("mse", "mse")
    assert baseline["value"] < 1e-10 < compressed["value"]  # the damage shows
    assert compressed["higher_is_better"] is False
    assert report["compressed"]["agreement"]["cosine"] == pytest.approx(1.0)  # blind to it


@pytest.mark.parametrize("name", ["vad.pt", "vad.onnx"])
def test_cosine_asked_for_on_one_value_per_sample_is_refused_before_any_work(
        files: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(StudioError, match=r"metric cosine compares each sample's outputs as a "
                                          r"vector, but the model's output '\w+' \(shape "
                                          r"\[\w+, 1\]\) gives one value per sample.*use mse"):
        list(run_recipe(_recipe(files / name, metric="cosine"), files, tmp_path / "out",
                        CancelToken(), trust=True))
    assert not (tmp_path / "out").exists()
