"""Data for models taking several inputs: .npz arrays named like the model's inputs, split row
for row alike, and constants given in the recipe, checked with a line number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from studio.core.data.sources import load_task
from studio.core.data.task import first_rows, model_inputs
from studio.core.engine.data_fit import check_torch_data
from studio.core.errors import InputError, RecipeError, StudioError
from studio.core.models.inputs import InputSpec
from studio.core.plan.recipe import parse_recipe
from studio.core.plan.stages import DataSection

SECTION = {"source": "arrays", "path": "d.npz", "inputs_key": ["frames", "state"],
           "constants": {"sr": 16000, "window": [[1, 2], [3, 4]]}, "calibration_samples": 3,
           "test_fraction": 0.25}


def _npz(folder: Path, rows: int = 8, **arrays: np.ndarray) -> None:
    given = {"frames": np.arange(rows * 3, dtype=np.float32).reshape(rows, 3),
             "state": np.arange(rows * 2, dtype=np.int64).reshape(rows, 2) * 10,
             "labels": np.arange(rows) % 2, "unused": np.zeros(rows)}
    np.savez(folder / "d.npz", **(given | arrays))


def test_named_arrays_are_split_row_for_row_and_constants_ride_along(tmp_path: Path) -> None:
    _npz(tmp_path)
    task = load_task(DataSection.model_validate(SECTION), tmp_path)
    assert task.input_names == ("frames", "state")
    for split in (task.train, task.test, task.calibration):
        inputs = model_inputs(split)
        assert list(inputs) == ["frames", "state"] and split.tensors[0] is inputs["frames"]
        rows = (inputs["frames"][:, 0] / 3).long()  # each frame's row number in the file
        torch.testing.assert_close(inputs["state"], torch.stack([rows * 20, rows * 20 + 10], 1))
        torch.testing.assert_close(split.tensors[1], rows % 2)
    assert (len(task.test), len(task.calibration)) == (2, 3)
    assert task.constants["sr"] == 16000 and task.constants["window"].shape == (2, 2)
    assert task.summary()["inputs"] == {"arrays": ["frames", "state"],
                                        "constants": {"sr": 16000, "window": [[1, 2], [3, 4]]}}
    cut = first_rows(task.train, 2)
    assert [len(v) for v in model_inputs(cut).values()] == [2, 2] and len(cut.tensors) == 2


def test_a_separate_test_set_must_give_the_same_inputs(tmp_path: Path) -> None:
    _npz(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _npz(other, state=np.zeros((8, 5), np.int64))
    with pytest.raises(StudioError, match=r"other/d.npz: samples 'state' of shape \[5\] where "
                                          r"d.npz has \[2\]"):
        load_task(DataSection.model_validate(SECTION | {"test_path": "other/d.npz"}), tmp_path)


def test_a_named_array_that_is_missing_is_named_with_what_the_file_holds(
        tmp_path: Path) -> None:
    _npz(tmp_path)
    section = SECTION | {"inputs_key": ["frames", "hidden"]}
    with pytest.raises(StudioError, match=r"d.npz: no array named 'hidden' for the inputs; it "
                                          r"holds frames, state, labels, unused"):
        load_task(DataSection.model_validate(section), tmp_path)
    np.save(tmp_path / "one.npy", np.zeros((4, 3), np.float32))
    with pytest.raises(StudioError, match=r"one.npy: a .npy holds one array; several named "
                                          r"inputs \(frames, state\) need a .npz"):
        load_task(DataSection.model_validate(SECTION | {"path": "one.npy"}), tmp_path)


@pytest.mark.parametrize("data, message", [
    ("{source: arrays, path: d.npz, constants: {sr: fast}}",
     r"line 3: data.constants: sr: give a number or a nested list of numbers"),
    ("{source: arrays, path: d.npz, constants: {w: [[1, 2], [3]]}}",
     r"line 3: data.constants: w: give a number or a nested list of numbers \(a "
     r"rectangular array\)"),
    ("{source: arrays, path: d.npz, inputs_key: [a, b, a]}",
     r"line 3: data.inputs_key: a named more than once"),
    ("{source: images, path: pics, inputs_key: [a, b]}",
     r"line 3: data: inputs_key as a list names .npz arrays: only for source "
     r"'arrays'"),
    ("{source: arrays, path: d.npz, inputs_key: [a, sr], constants: {sr: 1}}",
     r"line 3: data: sr: given both as an array \(inputs_key\) and in constants"),
])
def test_recipe_errors_name_the_field_and_line(data: str, message: str) -> None:
    text = f"schema_version: 1\nmodel: {{path: demo}}\ndata: {data}\n"
    with pytest.raises(RecipeError, match=message):
        parse_recipe(text)


def test_a_torch_model_refuses_named_inputs(tmp_path: Path) -> None:
    _npz(tmp_path)
    task = load_task(DataSection.model_validate(SECTION), tmp_path)
    with pytest.raises(InputError, match=r"data: named inputs and constants \(frames, state, "
                                         r"sr, window\) feed an ONNX file's inputs by name; a "
                                         r"torch model takes the data's one input tensor"):
        check_torch_data(torch.nn.Linear(3, 2), task, InputSpec((1, 3), "float32"))


def test_a_sensitivity_sweep_on_a_torch_model_refuses_named_inputs(tmp_path: Path) -> None:
    from studio.core.engine.sensitivity import sensitivity_workspace
    from studio.core.jobs import CancelToken
    from studio.core.workspace import open_workspace

    _npz(tmp_path)
    task = load_task(DataSection.model_validate(SECTION), tmp_path)
    with pytest.raises(InputError, match=r"named inputs and constants \(frames, state, sr, "
                                         r"window\) feed an ONNX file's inputs by name"):
        next(sensitivity_workspace(open_workspace("demo"), CancelToken(), task=task))
