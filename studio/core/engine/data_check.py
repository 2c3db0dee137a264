"""Check Data as a job: read the data section, check that it fits the model, and report what the
user needs to see (split sizes, labels, metric, sample shape, the verdict).

The window runs it in a child process (``studio.core.jobs.child``, kind ``check_data``), like any
long job, so a decompression bomb, a crash or an endless loop in the user's data cannot take the
window down; the model is opened again there from the recipe (no layer tree is built).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from studio.core.data.sources import load_task
from studio.core.data.task import TaskData
from studio.core.engine.data_fit import check_data_fits
from studio.core.errors import StudioError
from studio.core.jobs.cancel import CancelToken
from studio.core.jobs.events import Event, Log, Result
from studio.core.models.loader import open_model
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import DataSection
from studio.core.workspace import resolve_path


def data_check_report(task: TaskData, problem: str | None, checked: bool) -> dict[str, Any]:
    """The task's summary with its sample's shape and dtype, and whether it fits the model
    (``problem`` says why not; nothing is claimed when it could not be ``checked``)."""
    inputs = task.test.tensors[0]
    return {**task.summary(), "sample_shape": list(inputs.shape[1:]),
            "sample_dtype": str(inputs.dtype).removeprefix("torch."), "problem": problem,
            "checked": checked}


def data_check_job(recipe: Recipe, base_dir: Path | None, token: CancelToken,
                   trust: bool = False) -> Iterator[Event]:
    """Load the recipe's data and check it against its model; one :class:`Result` with
    :func:`data_check_report`. Unreadable data raises its StudioError."""
    yield Log("Loading the data")
    task = load_task(recipe.data or DataSection(), base_dir, trust)
    token.check()
    problem, checked = None, False
    if recipe.model is not None:
        yield Log("Checking that the data fits the model")
        loaded = open_model(resolve_path(recipe.model.path, base_dir), recipe.model.architecture,
                            trust)
        example = recipe.example_input.to_spec() if recipe.example_input else loaded.example
        checked = loaded.module is None or example is not None
        try:
            check_data_fits(loaded, example, task)
        except StudioError as error:  # a shape, dtype or token id the model cannot take
            problem = str(error)
    yield Result(data_check_report(task, problem, checked))
