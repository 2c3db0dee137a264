"""Accuracy-aware quantization: keep the fewest layers float that hold the metric's drop
within a budget, and never lose the best file found.

Each layer's contribution is measured, not guessed: the model is quantized with only that
layer left float, and layers are ranked by how much that alone gives back. Then the top one,
two, three... are kept float until the drop is within the budget. Peers' tuners stop with
"Not found any quantized model which meet accuracy goal" and keep nothing; here the best
trial (least drop, then fewest float layers) is returned either way, with ``met`` saying
whether it is within the goal.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Trial:
    floats: tuple[str, ...]
    """Layers (node names) kept float in this trial; empty: everything quantized."""
    score: float
    drop: float
    """How much worse than the float model, in the metric's units (positive: worse)."""

    def to_json(self) -> dict[str, object]:
        return {"float_layers": list(self.floats), "score": self.score, "drop": self.drop}


@dataclass
class AwareResult:
    allowed: float
    """The largest drop allowed, in the metric's units."""
    met: bool
    best: Trial
    base: Trial
    """Every layer quantized as planned."""
    trials: list[Trial] = field(default_factory=list)
    """Every trial, in the order tried (the base first)."""


def allowed_drop(max_drop: float, relative: bool, float_score: float) -> float:
    return max_drop * abs(float_score) if relative else max_drop


def search(layers: Sequence[str], float_score: float, higher_is_better: bool,
           allowed: float, base_score: float, score_with_float: Callable[[tuple[str, ...]], float],
           max_float: int, cost: Callable[[str], float] = lambda _: 0.0
           ) -> Generator[Trial, None, AwareResult]:
    """Yield each trial as it is scored; return the result. ``score_with_float(floats)``
    quantizes with ``floats`` kept float and scores the file (the caller keeps the best).
    When several single layers meet the goal, the one of least ``cost`` (its MACs: what
    running it in float costs) is kept float."""

    def drop(score: float) -> float:
        return float_score - score if higher_is_better else score - float_score

    base = Trial((), base_score, drop(base_score))
    trials = [base]

    def result(met: bool, best: Trial | None = None) -> AwareResult:
        chosen = best or min(trials, key=lambda t: (t.drop, len(t.floats)))
        return AwareResult(allowed, met, chosen, base, trials)

    if base.drop <= allowed or not layers:
        return result(base.drop <= allowed, base)
    singles: dict[str, Trial] = {}
    for layer in layers:
        score = score_with_float((layer,))
        trial = Trial((layer,), score, drop(score))
        trials.append(trial)
        singles[layer] = trial
        yield trial
    ranked = sorted(layers, key=lambda name: singles[name].drop)
    meeting = [name for name in ranked if singles[name].drop <= allowed]
    if meeting:
        return result(True, singles[min(meeting, key=lambda n: (cost(n), singles[n].drop))])
    for count in range(2, min(max_float, len(ranked)) + 1):
        floats = tuple(ranked[:count])
        score = score_with_float(floats)
        trial = Trial(floats, score, drop(score))
        trials.append(trial)
        yield trial
        if trial.drop <= allowed:
            return result(True, trial)
    return result(False)
