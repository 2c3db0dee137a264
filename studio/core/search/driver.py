"""The search loop, the same for every search and every executor: ask a generation of trials
from the study, evaluate them at the cheap fidelity wherever the executor runs them, tell the
study each as it finishes (the next generation is asked only once all are told, so the sampler
sees the same history however many workers ran it), then
run the best share of the generation at full fidelity (successive halving) and save each as an
experiment of the project.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from studio.core.jobs import CancelToken, Event, Log, Progress, Result
from studio.core.jobs.events import Trial
from studio.core.plan.recipe import Recipe
from studio.core.project.experiments import new_experiment, save_experiment
from studio.core.search.executors import Executor, make_executor
from studio.core.search.front import crowding_distances, pareto_ranks
from studio.core.search.problem import SearchProblem, TrialOutcome, TrialRequest
from studio.core.search.settings import SearchSettings
from studio.core.search.study import (
    INTERRUPTED,
    finished,
    open_study,
    recover_interrupted,
    study_path,
    trial_rows,
)

STAGE = "search"
TRIALS_DIR = "trials"


def promoted(outcomes: dict[int, TrialOutcome], fraction: float) -> list[int]:
    """The best ``fraction`` of a generation by the proxy, chosen as NSGA-II selects: feasible
    first, then by non-domination rank, then spread along the front (largest crowding
    distance first, its extremes before all). Spread, not the sum of the values: a drop in
    points outweighs any cost ratio in a sum, so the sum promoted only the least-compressed
    plans and never a deep cut whose zero-shot drop recovery would repair."""
    numbers = sorted(outcomes)
    if not numbers:
        return []
    values = [outcomes[n].values for n in numbers]
    ranks = pareto_ranks(values)
    crowding = [0.0] * len(numbers)
    for rank in set(ranks):
        members = [i for i in range(len(numbers)) if ranks[i] == rank]
        for i, distance in zip(members, crowding_distances([values[i] for i in members]),
                               strict=True):
            crowding[i] = distance
    order = sorted(range(len(numbers)), key=lambda i: (
        sum(max(0.0, c) for c in outcomes[numbers[i]].constraints.values()), ranks[i],
        -crowding[i], numbers[i]))
    count = max(1, math.ceil(len(numbers) * fraction))
    return sorted(numbers[i] for i in order[:count])


class _Run:
    """One run of the loop over a study (a fresh start or a resume)."""

    def __init__(self, problem: SearchProblem, settings: SearchSettings, folder: Path,
                 token: CancelToken, executor: Executor, project_dir: Path,
                 clock: Callable[[], float]) -> None:
        self.problem, self.settings, self.folder = problem, settings, folder
        self.clock = clock
        self.token, self.executor, self.project_dir = token, executor, project_dir
        self.distributions = problem.distributions()
        self.study = open_study(folder, settings, problem.objectives, self.distributions)
        self.evaluated = 0
        """Proxy trials this run evaluated (a resume does not redo finished ones)."""

    def _trial_event(self, number: int, outcome: TrialOutcome | str, params: dict[str, Any]
                     ) -> Trial:
        if isinstance(outcome, str):
            return Trial(number, "failed", "proxy", params=params, reason=outcome)
        return Trial(number, "complete", outcome.fidelity, dict(outcome.figures), params)

    def generation(self, size: int, deadline: float = math.inf) -> Iterator[Event]:
        study = self.study
        asked = [study.ask(self.distributions) for _ in range(size)]
        by_number = {trial.number: trial for trial in asked}
        for trial in asked:
            yield Trial(trial.number, "running", "proxy", params=dict(trial.params))
        outcomes: dict[int, TrialOutcome | str] = {}
        done = len(finished(study))  # counted on, not re-read from SQLite after every tell
        for request, outcome in self.executor.run(self.problem, self._largest_first(
                [TrialRequest(t.number, dict(t.params), "proxy") for t in asked])):
            # Told at once, so a kill loses no finished trial. The order of tells within a
            # generation does not change what the sampler sees at the next ask (the study's
            # trials by number), so any number of workers gives the same next generation.
            self._tell(by_number[request.number], outcome)
            outcomes[request.number] = outcome
            self.evaluated += 1
            done += 1
            yield self._trial_event(request.number, outcome, request.params)
            yield Progress(STAGE, done, self.settings.trials)
            self.token.check()
        if self.settings.full_fidelity and self.clock() >= deadline:
            yield Log("Time budget reached: this generation's best trials keep their proxy "
                      "figures (no full-fidelity run)")
        elif self.settings.full_fidelity:
            good = {n: o for n, o in outcomes.items() if isinstance(o, TrialOutcome)}
            chosen = promoted(good, self.settings.promote_fraction)
            yield from self.full(chosen)

    def _largest_first(self, requests: list[TrialRequest]) -> list[TrialRequest]:
        """Longest job first: the workers take the costliest trials first, so the
        generation does not wait on a large one started last. Each trial is seeded by its
        number, so the order changes no result."""
        return sorted(requests, key=lambda r: (-self.problem.work(r.params), r.number))

    def _tell(self, trial: optuna.Trial, outcome: TrialOutcome | str) -> None:
        if isinstance(outcome, str):
            trial.set_user_attr("failure", outcome)
            self.study.tell(trial, state=TrialState.FAIL)
            return
        trial.set_user_attr("figures", outcome.figures)
        for name, excess in outcome.constraints.items():  # what the samplers read
            trial.set_constraint(name, excess)
        trial.set_user_attr("seconds", outcome.seconds)
        self.study.tell(trial, outcome.values)

    def full(self, numbers: Sequence[int]) -> Iterator[Event]:
        """Run trials at full fidelity; each is marked promoted first, so a resume finishes
        what a kill interrupted."""
        if not numbers:
            return
        study = self.study
        marked = set(study.user_attrs.get("promoted", []))
        study.set_user_attr("promoted", sorted(marked | set(numbers)))
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        requests = [TrialRequest(n, dict(trials[n].params), "full",
                                 str(self.folder / TRIALS_DIR / f"{n:05d}")) for n in numbers]
        yield Log(f"Full fidelity for trial(s) {', '.join(map(str, numbers))}: recovery, "
                  "export and onnxruntime timing")
        for request in requests:
            yield Trial(request.number, "running", "full", params=request.params)
        for request, outcome in self.executor.run(self.problem, self._largest_first(requests)):
            if isinstance(outcome, str):
                study.set_user_attr(f"full/{request.number}", {"failure": outcome})
                yield Trial(request.number, "failed", "full", params=request.params,
                            reason=outcome)
            else:
                experiment = self._save(request, outcome)
                study.set_user_attr(f"full/{request.number}", {
                    "figures": outcome.figures, "experiment": experiment,
                    "seconds": outcome.seconds})
                yield Trial(request.number, "complete", "full", dict(outcome.figures),
                            request.params, experiment=experiment)
            self.token.check()

    def _save(self, request: TrialRequest, outcome: TrialOutcome) -> str:
        recipe = Recipe.model_validate(outcome.recipe) if outcome.recipe else None
        experiment = new_experiment(f"search trial {request.number}", report=outcome.report,
                                    recipe=recipe)
        save_experiment(self.project_dir, experiment, outcome.files)
        return experiment.id

    def unfinished_full(self) -> list[int]:
        attrs = self.study.user_attrs
        return [n for n in attrs.get("promoted", []) if f"full/{n}" not in attrs]


def run_search(problem: SearchProblem, settings: SearchSettings, folder: Path,
               token: CancelToken, executor: Executor | None = None,
               project_dir: Path | None = None, seeds: Sequence[Mapping[str, Any]] = (),
               clock: Callable[[], float] = time.monotonic) -> Iterator[Event]:
    """Run (or resume) the search stored in ``folder`` until the study holds
    ``settings.trials`` finished trials, ``settings.minutes`` pass on ``clock`` (wall time;
    a benchmark passes CPU time), or ``token`` is cancelled. ``seeds``: known parameter sets
    (a recipe's plan, an allocator's proposal) a new study evaluates first, in its first
    generation; a resumed study ignores them. Full-fidelity trials are saved as experiments
    of ``project_dir`` (default ``folder``). The last event is a :class:`Result` with the
    trials and the front."""
    folder = Path(folder)
    run = _Run(problem, settings, folder, token,
               executor or make_executor(settings.workers, settings.ray_address),
               Path(project_dir) if project_dir is not None else folder, clock)
    started, wall = clock(), time.monotonic()
    deadline = started + 60.0 * settings.minutes if settings.minutes else math.inf
    try:
        again = recover_interrupted(run.study)
        if seeds and not run.study.get_trials(deepcopy=False):
            for params in seeds:
                run.study.enqueue_trial(dict(params), skip_if_exists=True)
            yield Log(f"Seeded with {len(seeds)} known configuration(s), evaluated first")
        done = len(finished(run.study))
        yield Log(f"Search: {', '.join(problem.objectives)} minimised over "
                  f"{len(run.distributions)} choices; {done} of {settings.trials} trials "
                  f"already in {study_path(folder)}; running on {run.executor.where}")
        if again:
            yield Log(f"Trial(s) {', '.join(map(str, again))} were interrupted; they run again")
        for number in again:
            yield Trial(number, "failed", reason=INTERRUPTED)
        yield from run.full(run.unfinished_full())
        pace = 0.0
        """What the last generation took on ``clock``: the next starts only if the budget
        left covers as much, so a search ends inside its budget instead of past it."""
        while True:
            left = settings.trials - len(finished(run.study))
            if left <= 0:
                break
            if clock() + pace >= deadline:
                yield Log(f"Time budget of {settings.minutes:g} min reached (another "
                          f"generation would take about {pace:.0f} s more); run the search "
                          "again to continue it")
                break
            token.check()
            began = clock()
            yield from run.generation(min(settings.population, left), deadline)
            pace = clock() - began
    finally:
        run.executor.close()
    rows = trial_rows(run.study)
    yield Result({"study": str(study_path(folder)), "objectives": problem.objectives,
                  "evaluated": run.evaluated, "elapsed_s": round(time.monotonic() - wall, 2),
                  "trials": [row.__dict__ for row in rows]})
