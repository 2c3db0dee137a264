"""A detector's raw outputs (boxes N x K x 4 and scores N x K x C) are not class scores: runs
score them by cosine and MSE, per output, never by an arg-max over box coordinates."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from studio.core.engine.run import run_recipe
from studio.core.errors import StudioError
from studio.core.export.measure import output_figures
from studio.core.jobs import CancelToken, Result
from studio.core.plan.recipe import Recipe

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ANCHORS, CLASSES = 16, 3


class TinyDetector(nn.Module):
    """A conv backbone and two heads, as single-stage detectors end before their NMS."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.boxes = nn.Conv2d(16, 4, 1)
        self.scores = nn.Conv2d(16, CLASSES, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(image)
        boxes = self.boxes(features).flatten(2).transpose(1, 2) * 32  # pixels, N x K x 4
        return boxes, self.scores(features).flatten(2).transpose(1, 2).sigmoid()


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("detector")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TinyDetector().eval(), (torch.randn(1, 3, 8, 8),),
                          str(folder / "detector.onnx"), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["boxes", "scores"],
                          dynamic_axes={"images": {0: "batch"}, "boxes": {0: "batch"},
                                        "scores": {0: "batch"}})
    np.savez(folder / "images.npz",
             x=np.random.default_rng(0).normal(size=(30, 3, 8, 8)).astype(np.float32))
    return folder / "detector.onnx"


def _recipe(detector: Path, **data: object) -> Recipe:
    return Recipe.model_validate({
        "schema_version": 1, "model": {"path": str(detector)},
        "plan": {"defaults": {"weight_bits": "int8", "act_bits": "int8"}},
        "data": {"source": "arrays", "path": "images.npz", "calibration_samples": 16} | data,
        "export": {"latency_batch": 4, "latency_repeats": 2},
    })


def test_boxes_and_scores_are_scored_by_cosine_and_mse_per_output(
        detector: Path, tmp_path: Path) -> None:
    events = run_recipe(_recipe(detector), detector.parent, tmp_path / "out", CancelToken())
    report = next(e for e in events if isinstance(e, Result)).report
    for figures in (report["baseline"], report["compressed"]):
        assert figures["metric"]["name"] == "cosine"
        assert figures["agreement"]["top1_agreement"] is None
        assert figures["parity"]["top1_agreement"] is None
        assert set(figures["outputs"]) == {"boxes", "scores"}
        assert all(set(values) == {"cosine", "top1_agreement", "mse"}
                   and values["top1_agreement"] is None
                   for values in figures["outputs"].values())
    compressed = report["compressed"]["outputs"]
    assert compressed["boxes"]["cosine"] > 0.99 and compressed["scores"]["cosine"] > 0.99
    assert compressed["boxes"]["mse"] > compressed["scores"]["mse"] > 0  # pixels vs 0..1
    assert report["baseline"]["outputs"]["boxes"] == {"cosine": pytest.approx(1.0),
                                                      "top1_agreement": None, "mse": 0.0}
    assert report["compressed"]["agreement"]["cosine"] == compressed["boxes"]["cosine"]


def test_top1_agreement_asked_for_on_boxes_is_refused_before_any_work(
        detector: Path, tmp_path: Path) -> None:
    with pytest.raises(StudioError, match=r"^detector.onnx: metric top1_agreement compares "
                                          r"classes, but the model's first of 2 outputs "
                                          r"\('boxes', shape \[batch, \w+, \w+\]\) is not one "
                                          r"score per class \(\[batch, classes\]\); use "
                                          r"cosine or mse$"):
        list(run_recipe(_recipe(detector, metric="top1_agreement"), detector.parent,
                        tmp_path / "out", CancelToken()))
    assert not (tmp_path / "out").exists()


def test_outputs_of_undeclared_shape_are_refused_top1_once_measured() -> None:
    """A file may declare no output shapes; the measured outputs are checked then."""
    boxes = np.zeros((3, 16, 4), np.float32)
    outputs = {"boxes": boxes, "scores": np.zeros((3, 16, CLASSES), np.float32)}
    with pytest.raises(StudioError, match=r"^data: metric top1_agreement compares classes, "
                                          r"but the model's first of 2 outputs \('boxes', "
                                          r"shape \[3, 16, 4\]\)"):
        output_figures(outputs, outputs, outputs, "top1_agreement")
    single = {"logits": np.eye(3, dtype=np.float32)}
    assert output_figures(single, single, single, "top1_agreement")["metric"]["value"] == 1.0
