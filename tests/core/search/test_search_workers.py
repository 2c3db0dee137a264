"""Fan-out: local worker processes and a local Ray give the same trials as one process for a
fixed seed (the same code path, generations told in trial order), and a worker that dies fails
its trial with the reason while the search goes on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from studio.core.jobs import CancelToken, Result
from studio.core.jobs.events import Trial
from studio.core.search.driver import run_search
from studio.core.search.executors import DIED, InProcess, LocalProcesses, RayCluster
from tests.core.search.helpers import DyingProblem, tiny_problem, tiny_settings


def _trials(events) -> list[tuple[int, dict, list[float]]]:
    report = [e for e in events if isinstance(e, Result)][-1].report
    return [(row["number"], row["params"], [row["figures"][k] for k in ("drop_pt", "bytes")])
            for row in report["trials"]]


def test_two_local_workers_give_the_single_worker_trials(tmp_path: Path) -> None:
    settings = tiny_settings(trials=4, population=2)  # the second generation follows tells
    single = _trials(run_search(tiny_problem(settings, tmp_path), settings, tmp_path / "one",
                                CancelToken(), InProcess()))
    pooled = _trials(run_search(tiny_problem(settings, tmp_path), settings, tmp_path / "two",
                                CancelToken(), LocalProcesses(2)))
    assert pooled == single  # bit-identical figures, same choices
    assert len({str(params) for _, params, _ in single}) > 1


@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="ray is not installed (pip install '.[cluster]')")
def test_a_local_ray_gives_the_single_worker_trials(tmp_path: Path) -> None:
    settings = tiny_settings(trials=2, population=2)
    single = _trials(run_search(tiny_problem(settings, tmp_path), settings, tmp_path / "one",
                                CancelToken(), InProcess()))
    on_ray = _trials(run_search(tiny_problem(settings, tmp_path), settings, tmp_path / "ray",
                                CancelToken(), RayCluster("local", 2)))
    assert on_ray == single


def test_a_dead_worker_fails_its_trial_and_the_search_goes_on(tmp_path: Path) -> None:
    settings = tiny_settings(trials=3, population=1 + 1)
    base = tiny_problem(settings, tmp_path)
    problem = DyingProblem(base.recipe_json, base.base_dir, False, settings, base.layers,
                           base.groups)
    events = list(run_search(problem, settings, tmp_path / "s", CancelToken(),
                             LocalProcesses(2)))
    finished = {e.number: e for e in events if isinstance(e, Trial) and e.state != "running"}
    assert finished[0].state == "failed" and finished[0].reason == DIED
    assert finished[2].state == "complete"


def test_a_generation_is_handed_out_largest_trial_first(tmp_path: Path) -> None:
    settings = tiny_settings(trials=4, population=4, granularities=["channels"],
                             sparsity_levels=[0.0, 0.25, 0.5, 0.75])
    problem = tiny_problem(settings, tmp_path)
    events = list(run_search(problem, settings, tmp_path / "s", CancelToken(), InProcess()))
    done = [e for e in events if isinstance(e, Trial) and e.state == "complete"]
    work = [problem.work(e.params) for e in done]
    assert len(set(work)) > 1 and work == sorted(work, reverse=True)
    assert work[0] <= 1.0 and min(work) < 1.0  # a channel cut keeps less than all the MACs
