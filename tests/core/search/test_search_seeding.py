"""Seeding a study with known plans, a search's time budget on another clock, and the space
a recipe's exclusions leave."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import yaml

from studio.cli.main import main
from studio.core.jobs import CancelToken, Log
from studio.core.jobs.events import Trial
from studio.core.plan.plan import ROOT, Plan
from studio.core.plan.recipe import Recipe
from studio.core.plan.spec import LayerSpec
from studio.core.resources import resource_path
from studio.core.search.compression import CompressionProblem
from studio.core.search.driver import run_search
from studio.core.search.executors import InProcess, LocalProcesses
from studio.core.search.study import STUDY_NAME, study_path
from tests.core.search.helpers import RECIPE, tiny_problem, tiny_settings


def _params(folder: Path) -> list[dict]:
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{study_path(folder)}")
    return [t.params for t in study.trials]


def test_a_plan_maps_to_the_nearest_choices_of_the_space(tmp_path: Path) -> None:
    settings = tiny_settings()  # levels 0, 0.5, 0.9; bits fp32, int8; block1.0 and res.conv1.0
    problem = tiny_problem(settings, tmp_path)
    plan = Plan({ROOT: LayerSpec(sparsity=0.4, granularity="unstructured", weight_bits="int4"),
                 "res": LayerSpec(exclude=True)})
    (params,) = problem.seed_params([plan])
    assert params == {"sparsity/block1.0": 0.5, "sparsity/res.conv1.0": 0.0,
                      "bits/block1.0": "int8", "bits/res.conv1.0": "int8"}


def test_a_seeded_study_evaluates_the_seeds_first_and_a_resume_does_not_add_them_again(
        tmp_path: Path) -> None:
    settings = tiny_settings(trials=2)
    problem = tiny_problem(settings, tmp_path)
    seeds = problem.seed_params([Plan({ROOT: LayerSpec(sparsity=0.9, weight_bits="int8")})])
    events = list(run_search(problem, settings, tmp_path / "s", CancelToken(), seeds=seeds))
    assert any(isinstance(e, Log) and e.message.startswith("Seeded with 1") for e in events)
    assert _params(tmp_path / "s")[0] == seeds[0]
    more = tiny_settings(trials=4)
    again = list(run_search(tiny_problem(more, tmp_path), more, tmp_path / "s", CancelToken(),
                            seeds=seeds))
    assert not any(isinstance(e, Log) and e.message.startswith("Seeded") for e in again)
    assert len(_params(tmp_path / "s")) == 4


def test_the_time_budget_is_read_on_the_clock_given(tmp_path: Path) -> None:
    settings = tiny_settings(trials=4, population=2, minutes=1e-6)
    spent = list(run_search(tiny_problem(settings, tmp_path), settings, tmp_path / "s",
                            CancelToken(), InProcess(), clock=time.process_time))
    assert spent[-1].report["evaluated"] == 0  # opening the study spent the CPU budget
    assert any(isinstance(e, Log) and e.message.startswith("Time budget") for e in spent)
    frozen = list(run_search(tiny_problem(settings, tmp_path), settings, tmp_path / "t",
                             CancelToken(), InProcess(), clock=lambda: 0.0))
    assert frozen[-1].report["evaluated"] == 4  # a clock that never moves never ends it


def test_no_generation_starts_that_the_budget_left_cannot_cover(tmp_path: Path) -> None:
    settings = tiny_settings(trials=6, population=2, minutes=2.0)  # 120 s
    now = [0.0]
    events = []
    for event in run_search(tiny_problem(settings, tmp_path), settings, tmp_path / "s",
                            CancelToken(), InProcess(), clock=lambda: now[0]):
        if isinstance(event, Trial) and event.state == "complete":
            now[0] += 40.0  # each trial costs 40 s on this clock: a generation 80 s
        events.append(event)
    assert events[-1].report["evaluated"] == 2  # at 80 s, 80 s more would pass 120 s
    assert any(isinstance(e, Log) and "another generation would take about 80 s" in e.message
               for e in events)


def test_layers_the_recipe_excludes_are_not_searched(tmp_path: Path) -> None:
    recipe = Recipe.model_validate({**RECIPE, "plan": {"layers": {"head": {"exclude": True}}}})
    problem = CompressionProblem.create(recipe, tmp_path, False, tiny_settings(layers=None))
    assert "head.2" not in problem.layers and "block1.0" in problem.layers


def test_a_convolution_is_not_offered_bits_it_would_store_as_int8(tmp_path: Path) -> None:
    settings = tiny_settings(layers=["block1.0", "head.2"], bits=["fp32", "int8", "int4"])
    choices = {name: list(d.choices) for name, d in
               tiny_problem(settings, tmp_path).distributions().items()
               if name.startswith("bits/")}
    assert choices == {"bits/block1.0": ["fp32", "int8"],  # int4 conv: int8 in the file
                       "bits/head.2": ["fp32", "int8", "int4"]}  # MatMulNBits


def test_a_started_pool_has_every_worker_up_before_the_first_trial(tmp_path: Path) -> None:
    problem = tiny_problem(tiny_settings(), tmp_path)
    executor = LocalProcesses(2)
    try:
        executor.start(problem)
        pool = executor._pool
        assert pool is not None and len(pool._processes) == 2
        executor.start(problem)  # already warm for this problem: the same pool
        assert executor._pool is pool
    finally:
        executor.close()


def test_the_cli_seeds_a_new_search_with_a_recipes_plan(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    code = main(["search", str(recipe), "--out", str(tmp_path / "s"), "--trials", "2",
                 "--population", "2", "--proxy-only", "--layers", "block1.0,res.conv1.0",
                 "--sparsity-levels", "0,0.5", "--validation-samples", "100",
                 "--seed-recipe", str(resource_path("recipes", "demo-int8.yaml"))])
    assert code == 0
    assert _params(tmp_path / "s")[0] == {"sparsity/block1.0": 0.0,
                                          "sparsity/res.conv1.0": 0.0,
                                          "bits/block1.0": "int8", "bits/res.conv1.0": "int8"}
