"""The search's result as trade-offs: which trials no other beats, and the hypervolume they
cover (how a benchmark compares a search with recipes or the greedy allocator)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from optuna._hypervolume import compute_hypervolume


def pareto_ranks(values: Sequence[Sequence[float]]) -> list[int]:
    """Non-domination rank of each point (0: on the front), every value minimised. Written
    here because Optuna keeps its own sorting private; generations are small (O(n²) is fine)."""
    ranks = [-1] * len(values)
    left = set(range(len(values)))
    rank = 0
    while left:
        front = {i for i in left if not any(
            all(a <= b for a, b in zip(values[j], values[i], strict=True))
            and any(a < b for a, b in zip(values[j], values[i], strict=True))
            for j in left if j != i)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def crowding_distances(values: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II's crowding distance of each point within its set: the sum over objectives of
    the gap between its neighbours, normalised by the objective's range; the extremes of each
    objective get infinity. A larger distance is a point in a sparser part of the front.
    Written here because Optuna keeps its own private."""
    count = len(values)
    distances = [0.0] * count
    if count <= 2:
        return [math.inf] * count
    for axis in range(len(values[0])):
        order = sorted(range(count), key=lambda i: (values[i][axis], i))
        low, high = values[order[0]][axis], values[order[-1]][axis]
        distances[order[0]] = distances[order[-1]] = math.inf
        if high == low:
            continue
        for before, here, after in zip(order, order[1:], order[2:], strict=False):
            distances[here] += (values[after][axis] - values[before][axis]) / (high - low)
    return distances


def full_front(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str]
               ) -> list[Mapping[str, Any]]:
    """The complete full-fidelity trials on the front of ``objectives`` (minimised)."""
    full = [row for row in rows if row["fidelity"] == "full" and row["state"] == "complete"
            and all(key in row["figures"] for key in objectives)]
    ranks = pareto_ranks([[row["figures"][key] for key in objectives] for row in full])
    return sorted((row for row, rank in zip(full, ranks, strict=True) if rank == 0),
                  key=lambda row: [row["figures"][key] for key in objectives])


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Volume dominated by ``points`` (minimised) up to ``reference``; points beyond the
    reference in any value add nothing. Optuna's own (exact, any dimension) computes it; it is
    not public API, so an Optuna upgrade may move it."""
    inside = [p for p in points if all(a < r for a, r in zip(p, reference, strict=True))]
    if not inside:
        return 0.0
    return float(compute_hypervolume(np.asarray(inside, dtype=float),
                                     np.asarray(reference, dtype=float)))
