"""Real runs of the engine on the user's data: the demo CNN compressed with an image folder of
labelled PNGs, and with unlabelled arrays (recovered by matching the original's outputs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from studio.cli.main import main
from studio.core.data.task import SPLITS_FILE
from studio.core.engine.run import REPORT_FILE, run_recipe_file
from studio.core.errors import InputError
from studio.core.jobs import CancelToken, Log, Metric, Result
from studio.core.resources import resource_path

RECIPE = """schema_version: 1
model: {{path: demo}}
example_input: {{shape: [1, 1, 28, 28]}}
plan:
  layers:
    res.conv2: {{sparsity: 0.5}}
data: {data}
train: {{epochs: {epochs}, batch_size: 16}}
export: {{latency_batch: 2, latency_repeats: 1}}
"""


def _write_recipe(folder: Path, data: str, epochs: int = 0) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(RECIPE.format(data=data, epochs=epochs))
    return path


def _run(recipe: Path, out: Path, trust: bool = False) -> list:
    return list(run_recipe_file(recipe, out, CancelToken(), trust=trust))


def test_labelled_image_folder_runs_and_records_its_splits(tmp_path: Path,
                                                           class_folder: Path) -> None:
    recipe = _write_recipe(tmp_path, "{source: images, path: images, test_fraction: 0.25, "
                                     "image: {channels: 1}}")
    events = _run(recipe, tmp_path / "out")
    report = events[-1].report
    assert isinstance(events[-1], Result)
    assert report == json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert report["data"] == {"name": "images: images", "source": "images", "labelled": True,
                              "metric": "accuracy",
                              "metric_reason": "auto: the data has labels", "num_classes": 2,
                              "sizes": {"train": 9, "fine_tune": 9, "calibration": 9,
                                        "test": 3}}
    for which in ("baseline", "compressed"):
        metric = report[which]["metric"]
        assert metric["name"] == "accuracy" and 0.0 <= metric["value"] <= 1.0
        assert report[which]["agreement"]["cosine"] > 0.9
    assert report["baseline"]["agreement"]["top1_agreement"] == 1.0
    splits = json.loads((tmp_path / "out" / SPLITS_FILE).read_text())
    assert splits["source"] == "images" and len(splits["indices"]["test"]) == 3
    assert set(splits["indices"]["test"]).isdisjoint(splits["indices"]["train"])
    names = {e.name for e in events if isinstance(e, Metric) and e.stage == "baseline"}
    assert names == {"accuracy"}


def test_unlabelled_arrays_recover_by_output_matching(tmp_path: Path) -> None:
    with np.load(resource_path("demo", "mnist-5k.npz")) as digits:
        np.savez(tmp_path / "digits.npz", images=digits["images"][:60])
    recipe = _write_recipe(tmp_path, "{source: arrays, path: digits.npz, test_fraction: 0.5}",
                           epochs=1)
    events = _run(recipe, tmp_path / "out")
    report = events[-1].report
    assert report["data"]["labelled"] is False and report["data"]["metric"] == "cosine"
    assert report["baseline"]["metric"]["value"] == pytest.approx(1.0, abs=1e-5)
    assert set(report["compressed"]["agreement"]) == {"cosine", "top1_agreement", "mse"}
    assert report["compressed"]["metric"]["value"] == report["compressed"]["agreement"]["cosine"]
    assert report["stages"]["recover"]["kind"] == "match"
    assert report["stages"]["recover"]["torch_metric"]["name"] == "cosine"
    assert any("No labels: recovering by matching" in e.message
               for e in events if isinstance(e, Log))
    assert {e.name for e in events if isinstance(e, Metric) and e.name != "loss"} == {"cosine"}
    splits = json.loads((tmp_path / "out" / SPLITS_FILE).read_text())
    assert splits["sizes"] == {"train": 30, "fine_tune": 30, "calibration": 30, "test": 30}


def test_data_that_does_not_fit_the_model_fails_before_any_work(tmp_path: Path) -> None:
    np.save(tmp_path / "wide.npy", np.zeros((10, 5), dtype=np.float32))
    recipe = _write_recipe(tmp_path, "{source: arrays, path: wide.npy}")
    with pytest.raises(InputError, match=r"the data gives inputs of shape \[N, 5\] \(float32\) "
                                         r"but the model expects \[1, 1, 28, 28\]"):
        _run(recipe, tmp_path / "out")
    assert not (tmp_path / "out" / "baseline.onnx").exists()
    np.savez(tmp_path / "many.npz", x=np.zeros((20, 1, 28, 28), dtype=np.float32),
             y=np.arange(20))
    recipe = _write_recipe(tmp_path, "{source: arrays, path: many.npz}")
    with pytest.raises(InputError, match="labels run up to 19 but the model gives outputs of "
                                         r"shape \[2, 10\]"):
        _run(recipe, tmp_path / "out")


def test_cli_refuses_a_function_source_without_trust(tmp_path: Path, capsys) -> None:
    recipe = _write_recipe(tmp_path, "{source: function, path: 'mypkg.data:batches'}")
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "mypkg.data:batches" in lines[0] and "--trust" in lines[0]


def test_the_unlabelled_example_recipe_reads_the_shipped_digits() -> None:
    from studio.core.data.sources import load_task
    from studio.core.plan.recipe import read_recipe

    recipe = read_recipe(resource_path("recipes", "demo-unlabelled.yaml"))
    task = load_task(recipe.data, resource_path("recipes"))
    assert not task.labelled and task.metric == "top1_agreement"
    inputs = task.test.tensors[0]
    assert inputs.shape == (1000, 1, 28, 28) and float(inputs.max()) == 1.0  # pixels in 0..1
