"""The elastic-subnet search from the CLI on the demo: a supernet trained once into the study's
folder, subnets searched through the same study, the chosen one fine-tuned, exported to ONNX
that matches torch and saved as an experiment; a resume reuses the supernet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml

from studio.cli.main import main
from studio.core.errors import StudioError
from studio.core.export.measure import run_onnx
from studio.core.jobs import CancelToken, Result
from studio.core.jobs.kinds import JobSpec, job_events
from studio.core.plan.recipe import Recipe
from studio.core.project.experiments import artifact_path, load_experiments
from studio.core.reports.run_report import RunReport
from studio.core.search.problem import TrialRequest
from studio.core.search.settings import SearchSettings
from studio.core.search.study import STUDY_NAME, study_path, trial_rows
from studio.core.search.subnet import SubnetProblem, supernet_path, train_supernet_job

RECIPE = {"schema_version": 1, "model": {"path": "demo"},
          "data": {"source": "demo", "calibration_samples": 32, "train_samples": 128},
          "train": {"epochs": 0, "batch_size": 32}, "export": {"latency_repeats": 2}}
ARGS = ["--space", "subnet", "--population", "2", "--seed", "1", "--supernet-epochs", "1",
        "--validation-samples", "64", "--full-epochs", "1", "--cost", "macs", "--widths",
        "0.25,1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_cli_trains_a_supernet_once_searches_it_and_exports_the_chosen_subnet(
        tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    folder = tmp_path / "s"
    assert main(["search", str(recipe), "--out", str(folder), "--trials", "2", *ARGS]) == 0
    printed = capsys.readouterr()
    assert "Supernet: 4 elastic channel group(s), 1 skippable block(s)" in printed.err
    assert "supernet: step 2/2" in printed.err and "[1/2," in printed.err  # steps, then trials
    assert "front (full fidelity, validation split):" in printed.out
    trained = supernet_path(folder).stat().st_mtime_ns

    (experiment,) = load_experiments(folder)
    onnx = artifact_path(folder, experiment, "onnx")
    assert onnx is not None
    report = RunReport.from_json(experiment.report)  # the window's report view reads it
    assert report.compressed.macs <= report.baseline.macs
    assert report.stages["fine_tune"]["epochs"] == 1 and "widths" in report.stages["subnet"]
    assert report.compressed.onnx_bytes == onnx.stat().st_size
    assert isinstance(report.data, dict) and report.data["sizes"]["test"] == 0
    assert "scored on 64 validation samples" in report.data["name"]  # never on test
    assert run_onnx(onnx, torch.rand(4, 1, 28, 28)).shape == (4, 10)
    rows = {row.number: row for row in trial_rows(_study(folder))}
    full = [row for row in rows.values() if row.fidelity == "full"]
    assert len(full) == 1 and full[0].figures["parity_max_abs"] < 1e-4
    assert full[0].experiment == experiment.id

    assert main(["search", str(recipe), "--out", str(folder), "--trials", "4", *ARGS]) == 0
    again = capsys.readouterr()
    assert "Supernet:" not in again.err  # resumed on the same supernet
    assert "2 of 4 trials already" in again.err
    assert supernet_path(folder).stat().st_mtime_ns == trained


def test_a_full_fidelity_subnet_exports_onnx_that_matches_torch(tmp_path: Path) -> None:
    settings = SearchSettings(space="subnet", widths=[0.5, 1.0], validation_samples=64,
                              costs=["macs", "latency"], proxy_samples=32, supernet_epochs=1,
                              full_epochs=0)
    recipe = Recipe.model_validate(RECIPE)
    spec = JobSpec("supernet", recipe, tmp_path, tmp_path / "s",
                   options=settings.model_dump(mode="json"))
    (result,) = [e for e in job_events(spec, CancelToken()) if isinstance(e, Result)]
    assert result.report["supernet"] == str(supernet_path(tmp_path / "s"))
    assert result.report["steps"] == 2 and result.report["blocks"] == ["res"]
    with pytest.raises(StudioError, match=r"supernet\.pt exists: a supernet was trained there"):
        list(train_supernet_job(recipe, tmp_path, tmp_path / "s", CancelToken(), settings))
    problem = SubnetProblem.create(recipe, tmp_path, False, settings, tmp_path / "s")
    params = {name: 0.5 for name in problem.distributions() if name.startswith("width/")}
    params |= {f"skip/{block}": True for block in problem.blocks}
    outcome = problem.evaluate(TrialRequest(0, params, "full", str(tmp_path / "trial")))
    figures = outcome.figures
    assert figures["parity_max_abs"] < 1e-4
    assert figures["macs"] < 0.3 and figures["bytes"] < 0.5
    assert outcome.values == [figures["drop_pt"], figures["macs"], figures["latency"]]
    inputs = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        expected = problem.cut(params)(inputs).numpy()  # fine_tune 0 epochs: the cut itself
    assert np.abs(run_onnx(tmp_path / "trial" / "model.onnx", inputs) - expected).max() < 1e-4


def test_bad_widths_are_refused_in_one_line(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    assert main(["search", str(recipe), "--out", str(tmp_path / "s"), "--space", "subnet",
                 "--widths", "0,1"]) == 2
    assert "widths lie in (0, 1]; got [0.0]" in capsys.readouterr().err


def _study(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{study_path(folder)}")


def test_a_model_with_nothing_elastic_is_refused_before_training(tmp_path: Path) -> None:
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)),
               tmp_path / "linear.pt")
    recipe = Recipe.model_validate({**RECIPE, "model": {"path": "linear.pt"},
                                    "example_input": {"shape": [1, 1, 28, 28]}})
    settings = SearchSettings(space="subnet", validation_samples=64, proxy_samples=32)
    with pytest.raises(StudioError, match="no channel group that may shrink and no residual "
                                          "block that may be skipped; there is nothing to search"):
        list(train_supernet_job(recipe, tmp_path, tmp_path / "s", CancelToken(), settings,
                                trust=True))
    assert not supernet_path(tmp_path / "s").exists()


def test_a_bert_subnet_search_shrinks_heads_and_ffn_units(tmp_path: Path, capsys) -> None:
    """On a sentence-transformers BERT (token ids, no labels: cosine to the original), the
    supernet's elastic groups are its heads and FFN units, and the chosen subnet is a BERT with
    fewer of them, exported and matched in onnxruntime."""
    pytest.importorskip("transformers")
    from ..transformers.conftest import save_tiny_bert

    folder = save_tiny_bert(tmp_path / "bert")
    ids = np.random.default_rng(0).integers(1, 100, (160, 16)).astype(np.int64)
    np.savez(tmp_path / "tokens.npz", inputs=ids)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "schema_version": 1, "model": {"path": str(folder)},
        "data": {"source": "arrays", "path": "tokens.npz", "calibration_samples": 8},
        "train": {"epochs": 0, "batch_size": 8},
        "export": {"latency_repeats": 1, "latency_batch": 2}}))
    out = tmp_path / "s"
    assert main(["search", str(recipe), "--out", str(out), "--trials", "2", "--space", "subnet",
                 "--population", "2", "--seed", "0", "--supernet-epochs", "1",
                 "--full-epochs", "0", "--cost", "macs", "--validation-samples", "16",
                 "--widths", "0.5,1"]) == 0
    assert "Supernet: 4 elastic channel group(s)" in capsys.readouterr().err
    (experiment,) = load_experiments(out)
    report = RunReport.from_json(experiment.report)
    assert report.compressed.macs < report.baseline.macs
    widths = report.stages["subnet"]["widths"]
    assert set(widths.values()) <= {0.5, 1.0} and any(w < 1 for w in widths.values())
    assert report.compressed.parity is not None and report.compressed.parity["max_abs_diff"] < 1e-4
