"""Check Data as a job: read the data section and report what the user needs to see (split
sizes, labels, metric, sample shape, token ids the model's vocabulary lacks).

The window runs it in a child process (``studio.core.jobs.child``, kind ``check_data``), like any
long job, so a decompression bomb, a crash or an endless loop in the user's data cannot take the
window down. The model stays in the window, which has it loaded already (a second copy in the
child would double the memory and, for a transformer, cost tens of seconds): the child saves a
few test samples (:data:`PROBE_FILE`, plain arrays in a .npz) and the window runs the model
on those.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from studio.core.data.metrics import needs_reference
from studio.core.data.sources import load_task
from studio.core.data.task import NamedInputs, TaskData, first_rows, model_inputs
from studio.core.engine.data_fit import check_token_range
from studio.core.errors import InputError
from studio.core.jobs.cancel import CancelToken
from studio.core.jobs.events import Event, Log, Result
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import DataSection
from studio.core.workspace import resolve_path

PROBE_FILE = "probe.npz"
PROBE_SAMPLES = 2
"""As many test samples as :func:`~studio.core.engine.data_fit.check_torch_data` runs."""
UNSETTLED_METRIC = "auto (chosen from the model's output when it runs)"
"""What ``metric: auto`` on unlabelled data reads while the model's output is unknown: the data
alone cannot tell (see :func:`~studio.core.data.split.metric_for_output`)."""


def _shape(shape: tuple[int, ...] | list[int]) -> str:
    return "×".join(str(d) for d in shape) or "scalar"


def data_check_report(task: TaskData, problem: str | None,
                      section: DataSection | None = None) -> dict[str, Any]:
    """The task's summary with each input's sample shape and dtype (``samples``: name, text;
    the name is empty for one unnamed input), its constants, and what does not fit the model
    (``problem``), as far as the data alone tells: ``metric`` stays ``auto`` (with
    :data:`UNSETTLED_METRIC` as its reason) when ``section`` leaves it to the model's output."""
    if section is not None and section.metric == "auto" and needs_reference(task.metric):
        task = dataclasses.replace(task, metric="auto", metric_reason=UNSETTLED_METRIC)
    inputs = model_inputs(task.test)
    samples = [[name, f"{_shape(values.shape[1:])} {str(values.dtype).removeprefix('torch.')}"]
               for name, values in (inputs if isinstance(inputs, dict) else {"": inputs}).items()]
    constants = [[name, str(value.tolist()) if value.size <= 4 else
                  f"{_shape(value.shape)} {value.dtype}"] for name, value in task.constants.items()]
    return {**task.summary(), "samples": samples, "constants": constants, "problem": problem}


def _save_probe(task: TaskData, path: Path) -> None:
    probe = first_rows(task.test, PROBE_SAMPLES)
    inputs = model_inputs(probe)
    arrays = {f"input:{name}": values.numpy() for name, values in inputs.items()} \
        if isinstance(inputs, dict) else {"input": inputs.numpy()}
    arrays |= {f"constant:{name}": value for name, value in task.constants.items()}
    np.savez(path, **arrays)


def data_check_job(recipe: Recipe, base_dir: Path | None, out_dir: Path, token: CancelToken,
                   trust: bool = False, vocabulary: tuple[str, int] | None = None
                   ) -> Iterator[Event]:
    """Load the recipe's data, check its token ids against ``vocabulary`` (what, size) when
    given, save the probe samples in ``out_dir``; one :class:`Result` with
    :func:`data_check_report`. Unreadable data raises its StudioError."""
    yield Log("Loading the data")
    model_path = None if recipe.model is None else Path(resolve_path(recipe.model.path, base_dir))
    task = load_task(recipe.data or DataSection(), base_dir, trust, model_path)
    token.check()
    problem = None
    if vocabulary is not None and not task.input_names:
        try:
            check_token_range(task, (str(vocabulary[0]), int(vocabulary[1])))
        except InputError as error:
            problem = str(error)
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_probe(task, out_dir / PROBE_FILE)
    yield Result(data_check_report(task, problem, recipe.data or DataSection()))


def probe_task(report: dict[str, Any], probe: dict[str, np.ndarray]) -> TaskData:
    """A stand-in for the checked data holding only its probe samples (as
    :func:`_save_probe` wrote them): what
    :func:`~studio.core.engine.data_fit.check_data_fits` needs, in the window that holds the
    model."""
    named = {key.removeprefix("input:"): torch.from_numpy(value)
             for key, value in probe.items() if key.startswith("input:")}
    split = NamedInputs(named) if named else TensorDataset(torch.from_numpy(probe["input"]))
    constants = {key.removeprefix("constant:"): value for key, value in probe.items()
                 if key.startswith("constant:")}
    return TaskData(split, split, split, report["num_classes"], report["name"],
                    report["labelled"], report["metric"], constants=constants)
