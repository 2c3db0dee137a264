"""The whole pipeline (``run RECIPE --out DIR``) on tiny random LLaMA and GPT-2 folders with
text data: perplexity measured on the exported files in onnxruntime, lower is better, and a
greedy sample of each model in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio.cli.main import main
from studio.core.data.sources import load_task
from studio.core.models.loader import open_model
from studio.core.plan.recipe import read_recipe
from studio.core.plan.stages import DataSection
from studio.core.reports.run_report import RunReport
from studio.core.train.loop import evaluate

from .conftest import TEXT

RECIPE = """schema_version: 1
model: {{path: {model}}}
plan:
  layers:
    {block}: {{sparsity: 0.5}}
data: {{source: text, path: text.txt, block_length: 24, calibration_samples: 4,
        prompt: "The quick", generate_tokens: 5}}
train: {{epochs: 0}}
export: {{latency_batch: 2, latency_repeats: 1}}
"""


@pytest.mark.parametrize(("kind", "block"), [("llama", "model.model.layers.0"),
                                             ("gpt2", "model.transformer.h.0")])
def test_run_measures_perplexity_of_the_exported_files(
        kind: str, block: str, tmp_path: Path, request: pytest.FixtureRequest,
        capsys: pytest.CaptureFixture[str]) -> None:
    folder: Path = request.getfixturevalue(f"tiny_{kind}")
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(model=folder, block=block))
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "perplexity, lower is better" in printed and "baseline writes: 'The quick'" in printed
    report = RunReport.from_json(json.loads((tmp_path / "out" / "report.json").read_text()))
    assert report.metric == "perplexity"
    assert report.baseline.metric.higher_is_better is False
    # the baseline file's perplexity in onnxruntime is the torch model's on the same test split
    section = read_recipe(recipe).section(DataSection)
    task = load_task(section, tmp_path, model_path=folder)
    original = open_model(folder).module
    assert report.baseline.metric.value == pytest.approx(
        evaluate(original, task.test, metric="perplexity"), rel=1e-4)
    assert report.compressed.metric.value != pytest.approx(report.baseline.metric.value)
    assert report.compressed.nonzero_params < report.baseline.nonzero_params
    assert report.baseline.generation is not None and report.compressed.generation is not None
    assert report.baseline.generation["prompt"] == "The quick"


def test_a_run_with_kv_cache_writes_a_cached_file_that_generates_the_compressed_models_tokens(
        tiny_llama: Path, tmp_path: Path) -> None:
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(model=tiny_llama, block="model.model.layers.1")
                      .replace("latency_repeats: 1}", "latency_repeats: 1, kv_cache: true}"))
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    stage = report["stages"]["kv_cache"]
    assert stage["same_tokens_as_torch"] is True and stage["new_tokens"] == 5
    assert stage["prompt_tokens"] == 23  # a 24-token held-out block, less its last token
    assert Path(report["paths"]["kv_cache"]) == tmp_path / "out" / "model-kv.onnx"
    assert (tmp_path / "out" / "model-kv.onnx").is_file()
    assert any("model-kv.onnx" in note and "per new token" in note for note in report["notes"])


def test_kv_cache_for_a_model_that_is_not_a_language_model_is_refused_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("schema_version: 1\nmodel: {path: demo}\nexport: {kv_cache: true}\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "export.kv_cache" in error and "not a causal language model" in error
    assert not (tmp_path / "out").exists()
