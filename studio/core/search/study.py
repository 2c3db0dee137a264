"""The study on disk: Optuna's SQLite storage in the search's folder, so a killed or cancelled
search resumes where it stopped. Full-fidelity results, which arrive after the sampler was told
a trial's proxy values, are kept as study attributes (``full/<number>``) beside it; a trial
promoted to full fidelity is marked (``promoted``) before its run starts, so a resume finishes
it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.trial import FrozenTrial, TrialState

from studio.core.errors import StudioError
from studio.core.search.settings import SearchSettings

STUDY_FILE = "search.db"
STUDY_NAME = "search"
INTERRUPTED = "interrupted: the search stopped while this trial ran; it runs again on resume"


def _sampler(settings: SearchSettings) -> optuna.samplers.BaseSampler:
    """Both samplers read the constraints each trial sets (``Trial.set_constraint``)."""
    if settings.single_objective:
        return optuna.samplers.TPESampler(seed=settings.seed,
                                          n_startup_trials=settings.population)
    return optuna.samplers.NSGAIISampler(seed=settings.seed,
                                         population_size=settings.population)


def _space_json(distributions: dict[str, BaseDistribution]) -> str:
    return json.dumps({name: distribution_to_json(d) for name, d in distributions.items()},
                      sort_keys=True)


def study_path(folder: Path) -> Path:
    return Path(folder) / STUDY_FILE


def open_study(folder: Path, settings: SearchSettings, objectives: Sequence[str],
               distributions: dict[str, BaseDistribution]) -> optuna.Study:
    """Create the study in ``folder`` or load the one there; a study made for other
    objectives or another space is refused (its trials would mean something else)."""
    optuna.logging.set_verbosity(logging.WARNING)
    folder.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_path(folder)}")
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, load_if_exists=True,
                                sampler=_sampler(settings),
                                directions=["minimize"] * len(objectives))
    space = _space_json(distributions)
    known = study.user_attrs.get("space")
    if known is None:
        study.set_user_attr("space", space)
        study.set_user_attr("objectives", list(objectives))
        study.set_user_attr("settings", settings.model_dump(mode="json"))
    elif known != space or study.user_attrs.get("objectives") != list(objectives):
        raise StudioError(f"{study_path(folder)}: this folder holds a search over other "
                          "choices or objectives; give another --out folder to start a new "
                          "one")
    return study


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Trials left running by a killed or cancelled run: recorded as failed with the reason,
    and their parameters queued to run again first. Returns their numbers."""
    stale = [t for t in study.get_trials(deepcopy=False)
             if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for trial in stale:
        if trial.state is TrialState.RUNNING:
            study._storage.set_trial_user_attr(trial._trial_id, "failure", INTERRUPTED)
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params, skip_if_exists=False)
    return [t.number for t in stale]


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count toward the budget: finished, except those interrupted (they run
    again)."""
    return [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()
            and t.user_attrs.get("failure") != INTERRUPTED]


@dataclass
class TrialRow:
    """One trial as the table shows it: its best fidelity's figures."""

    number: int
    state: str
    fidelity: str
    figures: dict[str, float]
    params: dict[str, Any]
    reason: str = ""
    experiment: str = ""
    proxy: dict[str, float] = field(default_factory=dict)


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    attrs = study.user_attrs
    rows = []
    for trial in study.get_trials(deepcopy=False):
        full = attrs.get(f"full/{trial.number}") or {}
        proxy = trial.user_attrs.get("figures", {})
        fidelity = "full" if full.get("figures") else "proxy"
        rows.append(TrialRow(
            trial.number, trial.state.name.lower(), fidelity, full.get("figures") or proxy,
            dict(trial.params), trial.user_attrs.get("failure", "") or full.get("failure", ""),
            full.get("experiment", ""), proxy))
    return rows
