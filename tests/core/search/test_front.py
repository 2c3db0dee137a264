"""The pieces the search decides with: fronts, promotion to full fidelity, hypervolume, the
honest size of sub-8-bit convolutions, and the time estimate."""

from __future__ import annotations

import pytest

from studio.core.plan.estimate import estimate
from studio.core.plan.plan import ROOT, Plan
from studio.core.plan.spec import LayerSpec
from studio.core.search.driver import promoted
from studio.core.search.estimate import estimate_search_s
from studio.core.search.front import crowding_distances, hypervolume, pareto_ranks
from studio.core.search.problem import TrialOutcome
from studio.core.search.settings import SearchSettings


def test_pareto_ranks_peel_fronts() -> None:
    points = [[1, 5], [2, 2], [5, 1], [3, 3], [6, 6], [2, 2]]
    assert pareto_ranks(points) == [0, 0, 0, 1, 2, 0]


def test_crowding_distance_ranks_the_extremes_first_then_the_sparse_middle() -> None:
    points = [[0.0, 1.0], [1.0, 0.5], [1.2, 0.45], [4.0, 0.0]]
    distances = crowding_distances(points)
    assert distances[0] == distances[3] == float("inf")
    assert distances[1] == pytest.approx(1.2 / 4 + 0.55 / 1)  # neighbours 0 and 2
    assert distances[2] == pytest.approx(3.0 / 4 + 0.5 / 1)  # neighbours 1 and 3


def test_promotion_spreads_over_the_front_instead_of_favouring_the_smallest_drop() -> None:
    # A drop in points outweighs a bytes ratio in any sum: the deep cut (trial 3), whose
    # zero-shot drop recovery repairs, must still reach full fidelity.
    outcomes = {0: TrialOutcome([0.0, 0.9]), 1: TrialOutcome([0.5, 0.6]),
                2: TrialOutcome([1.0, 0.5]), 3: TrialOutcome([8.0, 0.05])}
    assert promoted(outcomes, 0.5) == [0, 3]


def test_promotion_takes_feasible_trials_first_then_the_front() -> None:
    outcomes = {0: TrialOutcome([0.1, 0.2], constraints={"drop_pt": 1.0}),  # best, infeasible
                1: TrialOutcome([1.0, 0.5], constraints={"drop_pt": 0.0}),
                2: TrialOutcome([2.0, 0.9], constraints={"drop_pt": -1.0}),
                3: TrialOutcome([0.5, 1.0], constraints={"drop_pt": 0.0})}
    assert promoted(outcomes, 0.5) == [1, 3]
    assert promoted(outcomes, 0.01) == [1]


def test_hypervolume_counts_only_what_lies_inside_the_reference() -> None:
    assert hypervolume([[1.0, 0.5]], [2.0, 1.0]) == pytest.approx(0.5)
    assert hypervolume([[1.0, 0.5], [1.5, 0.75]], [2.0, 1.0]) == pytest.approx(0.5)
    assert hypervolume([[3.0, 0.1]], [2.0, 1.0]) == 0.0


def test_int4_convolutions_are_sized_as_the_int8_the_file_stores(demo_workspace) -> None:
    tree = demo_workspace.tree
    int4 = Plan({ROOT: LayerSpec(weight_bits="int4")})
    int8 = Plan({ROOT: LayerSpec(weight_bits="int8")})
    honest = estimate(tree, int4.resolve(tree)).after.nbytes
    as_int8 = estimate(tree, int8.resolve(tree)).after.nbytes
    # the head's Linear keeps its int4 (a MatMulNBits weight); every convolution is int8
    assert as_int8 - 650 < honest < as_int8


def test_the_estimate_spreads_trials_over_workers_and_respects_the_minutes() -> None:
    settings = SearchSettings(trials=40, promote_fraction=0.25)
    one = estimate_search_s(settings, proxy_s=1.0, full_s=10.0)
    assert one == pytest.approx(40 * 1.0 + 10 * 10.0)
    two = estimate_search_s(settings.model_copy(update={"workers": 2}), 1.0, 10.0)
    assert two == pytest.approx(one / 2)
    assert estimate_search_s(settings.model_copy(update={"minutes": 1.0}), 1.0, 10.0) == 60.0
    assert estimate_search_s(settings, 1.0, 10.0, done=40) == 0.0
