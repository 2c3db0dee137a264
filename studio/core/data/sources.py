"""The one way from a recipe's ``data:`` section to a :class:`TaskData`: read the source, check
it, split it. Paths are relative to the recipe's or project's folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from torch.utils.data import TensorDataset

from studio.core.data.arrays import read_arrays
from studio.core.data.function import read_function
from studio.core.data.images import read_image_folder
from studio.core.data.samples import Samples, check_samples
from studio.core.data.split import resolve_metric, split_task
from studio.core.data.tabular import read_csv
from studio.core.data.task import TaskData, demo_task
from studio.core.data.text import read_text_blocks
from studio.core.data.validation import carve_validation
from studio.core.errors import StudioError
from studio.core.plan.stages import DataSection


def _resolve(path: str, base_dir: Path | None) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() or base_dir is None else base_dir / candidate


def _read(section: DataSection, path: str, base_dir: Path | None, trust: bool,
          train: Samples | None = None, model_path: Path | None = None) -> Samples:
    """One file, folder or function of the section's source; ``train`` (when reading the test
    set) gives the class names its labels must use; ``model_path`` is the model whose
    tokenizer a ``text`` source uses."""
    classes = train.classes if train is not None else None
    if section.source == "function":
        return read_function(path, trust, section.max_samples, base_dir)
    resolved = _resolve(path, base_dir)
    if section.source == "text":
        if model_path is None:
            raise StudioError(f"{path}: text data is tokenized with the model's tokenizer; "
                              "open a causal language model (a Hugging Face folder or a "
                              ".gguf file) first")
        return read_text_blocks(resolved, model_path, section.block_length,
                                section.max_samples)
    if section.source == "images":
        return read_image_folder(resolved, section.image, classes)
    if section.source == "arrays":
        return read_arrays(resolved, section.inputs_key, section.labels_key, section.image)
    return read_csv(resolved, section.label_column, classes)


def _unlabelled_demo(task: TaskData, section: DataSection) -> TaskData:
    def inputs(dataset: TensorDataset) -> TensorDataset:
        return TensorDataset(dataset.tensors[0])

    return dataclasses.replace(task, train=inputs(task.train), test=inputs(task.test),
                               calibration=inputs(task.calibration), num_classes=None,
                               labelled=False, metric=resolve_metric(section, False, "data"))


def _same_kind(test: Samples, pool: Samples, section: DataSection) -> None:
    """The separate test set must give the same inputs, of the same sample shapes."""
    assert section.test_path is not None
    pool_inputs = pool.named or {"": pool.inputs}
    test_inputs = test.named or {"": test.inputs}
    for name, inputs in pool_inputs.items():
        shape, test_shape = list(inputs.shape[1:]), list(test_inputs[name].shape[1:])
        if test_shape != shape:
            which = f" {name!r}" if name else ""
            raise StudioError(f"{section.test_path}: samples{which} of shape {test_shape} "
                              f"where {section.path} has {shape}; the test set must be of the "
                              "same kind")


def constant_inputs(section: DataSection) -> dict[str, np.ndarray]:
    """``data.constants`` as arrays (already checked to be numbers by the section)."""
    return {name: np.asarray(value) for name, value in section.constants.items()}


def load_task(section: DataSection, base_dir: Path | None = None, trust: bool = False,
              model_path: Path | None = None) -> TaskData:
    """The task's train / test / calibration splits as the section describes them, with the
    section's constant inputs. ``model_path`` (the opened model's file or folder) gives a
    ``text`` source its tokenizer.

    ``trust`` allows a ``function`` source to import and run the user's code; without it that
    source raises :class:`~studio.core.data.function.FunctionTrustRequired` (a TrustRequired).
    Every problem with the data is a StudioError naming the file, row or field.
    """
    task = dataclasses.replace(_splits(section, base_dir, trust, model_path),
                               constants=constant_inputs(section))
    if section.validation_samples is not None:
        task = carve_validation(task, section.validation_samples)
    return task


def _splits(section: DataSection, base_dir: Path | None, trust: bool,
            model_path: Path | None) -> TaskData:
    if section.source == "demo":
        task = demo_task(section.calibration_samples, section.split_seed, section.train_samples)
        if section.labelled is False:
            return _unlabelled_demo(task, section)
        return dataclasses.replace(task, metric=resolve_metric(section, True, "data"))
    assert section.path is not None  # the section's validator requires it
    pool = _read(section, section.path, base_dir, trust, model_path=model_path)
    check_samples(pool, section.path)
    test = None
    if section.test_path is not None:
        test = _read(section, section.test_path, base_dir, trust, pool, model_path)
        check_samples(test, section.test_path)
        _same_kind(test, pool, section)
    name = f"{section.source}: {section.path}"
    return split_task(pool, test, section, name, section.path)

