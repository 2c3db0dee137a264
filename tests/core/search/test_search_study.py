"""The search keeps everything: its study in SQLite, resumed after a kill without redoing
finished trials, failed trials recorded with their reason, full-fidelity trials saved as
experiments with their recipe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from studio.cli.main import main
from studio.core.errors import StudioError
from studio.core.jobs import CancelToken, JobCancelled, Result
from studio.core.jobs.events import Trial, event_from_json
from studio.core.project.experiments import artifact_path, load_experiments
from studio.core.search.driver import run_search
from studio.core.search.executors import InProcess
from studio.core.search.study import INTERRUPTED, STUDY_NAME, study_path
from tests.core.search.helpers import RECIPE, RaisingProblem, tiny_problem, tiny_settings


def _result(events) -> dict:
    found = [event for event in events if isinstance(event, Result)]
    return found[-1].report


def _study(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{study_path(folder)}")


def test_a_resumed_search_does_not_redo_finished_trials(tmp_path: Path) -> None:
    settings = tiny_settings(trials=2)
    first = _result(run_search(tiny_problem(settings, tmp_path), settings, tmp_path / "s",
                               CancelToken()))
    assert first["evaluated"] == 2
    values = {t.number: t.values for t in _study(tmp_path / "s").trials}
    more = tiny_settings(trials=4)
    second = _result(run_search(tiny_problem(more, tmp_path), more, tmp_path / "s",
                                CancelToken()))
    assert second["evaluated"] == 2
    trials = _study(tmp_path / "s").trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state is TrialState.COMPLETE for t in trials)
    assert {n: trials[n].values for n in values} == values


def test_a_killed_search_resumes_where_it_stopped(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    folder = tmp_path / "s"
    arguments = ["search", str(recipe), "--out", str(folder), "--trials", "6", "--population",
                 "2", "--seed", "3", "--proxy-only", "--layers", "block1.0,res.conv1.0",
                 "--granularities", "unstructured", "--sparsity-levels", "0,0.5,0.9",
                 "--validation-samples", "100", "--jsonl"]
    child = subprocess.Popen([sys.executable, "-m", "studio.cli.main", *arguments],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert child.stdout is not None
    done = 0
    for line in child.stdout:  # the child reports each trial once it has finished
        if '"event": "progress"' in line:
            done += 1
            if done == 3:  # mid-generation: trial 3 is running
                break
    child.send_signal(signal.SIGKILL)
    child.wait()
    before = {t.number: t.values for t in _study(folder).trials
              if t.state is TrialState.COMPLETE}
    assert 2 <= len(before) < 6
    capsys.readouterr()
    assert main(arguments) == 0
    report = _result(event_from_json(json.loads(line))
                     for line in capsys.readouterr().out.splitlines())
    trials = _study(folder).trials
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    assert len(complete) == 6
    assert report["evaluated"] == 6 - len(before)
    assert {t.number: t.values for t in trials if t.number in before} == before
    interrupted = [t for t in trials if t.user_attrs.get("failure") == INTERRUPTED]
    for trial in interrupted:  # run again with the same choices
        assert any(t.params == trial.params and t.state is TrialState.COMPLETE
                   for t in trials if t.number > trial.number)


def test_a_trial_that_raises_is_recorded_as_failed_and_the_search_goes_on(tmp_path: Path
                                                                          ) -> None:
    settings = tiny_settings(trials=3)
    base = tiny_problem(settings, tmp_path)
    problem = RaisingProblem(base.recipe_json, base.base_dir, False, settings, base.layers,
                             base.groups)
    events = list(run_search(problem, settings, tmp_path / "s", CancelToken(), InProcess()))
    failed = [e for e in events if isinstance(e, Trial) and e.state == "failed"]
    assert [(e.number, e.reason) for e in failed] == [
        (1, "RuntimeError: this trial's plan cannot be built")]
    trials = _study(tmp_path / "s").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL,
                                         TrialState.COMPLETE]
    assert trials[1].user_attrs["failure"] == "RuntimeError: this trial's plan cannot be built"


def test_a_cancelled_search_keeps_its_finished_trials(tmp_path: Path) -> None:
    settings = tiny_settings(trials=4)
    token = CancelToken()
    seen = 0
    with pytest.raises(JobCancelled):
        for event in run_search(tiny_problem(settings, tmp_path), settings, tmp_path / "s",
                                token):
            if isinstance(event, Trial) and event.state == "complete":
                seen += 1
                token.cancel()
    states = [t.state for t in _study(tmp_path / "s").trials]
    assert states.count(TrialState.COMPLETE) == seen == 1


def test_full_fidelity_trials_become_experiments_with_their_recipe(tmp_path: Path) -> None:
    settings = tiny_settings(trials=2, full_fidelity=True, promote_fraction=0.5)
    events = list(run_search(tiny_problem(settings, tmp_path), settings, tmp_path / "s",
                             CancelToken(), project_dir=tmp_path / "project"))
    full = [e for e in events if isinstance(e, Trial) and e.fidelity == "full"
            and e.state == "complete"]
    assert len(full) == 1
    (experiment,) = load_experiments(tmp_path / "project")
    assert experiment.id == full[0].experiment
    recipe = experiment.recipe
    assert recipe["data"]["validation_samples"] == 100  # scored on validation, not test
    assert experiment.report["data"]["sizes"]["test"] == 0
    onnx = artifact_path(tmp_path / "project", experiment, "onnx")
    assert onnx is not None and onnx.stat().st_size == experiment.report["compressed"][
        "onnx_bytes"]
    assert full[0].figures["bytes"] == pytest.approx(
        experiment.report["compressed"]["onnx_bytes"]
        / experiment.report["baseline"]["onnx_bytes"])


def test_a_folder_holding_another_search_is_refused(tmp_path: Path) -> None:
    settings = tiny_settings(trials=1)
    list(run_search(tiny_problem(settings, tmp_path), settings, tmp_path / "s", CancelToken()))
    other = tiny_settings(trials=1, costs=["macs"])
    with pytest.raises(StudioError, match="other choices or objectives"):
        list(run_search(tiny_problem(other, tmp_path), other, tmp_path / "s", CancelToken()))


def test_one_cost_with_a_drop_limit_is_tpe_under_the_constraint(tmp_path: Path) -> None:
    settings = tiny_settings(trials=2, costs=["bytes"], max_drop_pt=0.5, max_cost_ratio=0.5)
    list(run_search(tiny_problem(settings, tmp_path), settings, tmp_path / "s", CancelToken()))
    study = _study(tmp_path / "s")
    assert len(study.directions) == 1
    for trial in study.trials:
        figures = trial.user_attrs["figures"]
        assert trial.values == [figures["bytes"]]
        assert trial.constraints == pytest.approx({"drop_pt": figures["drop_pt"] - 0.5,
                                                   "bytes": figures["bytes"] - 0.5})
