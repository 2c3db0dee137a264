"""The report view of a causal LM's run shows what each model wrote after the prompt beside
the perplexity figures: a real run of a tiny random LLaMA (built from a transformers config),
its report.json read back into an experiment."""

from __future__ import annotations

import json
from pathlib import Path

from studio.cli.main import main
from studio.core.project.experiments import Experiment
from studio.core.reports.run_report import RunReport
from studio.qt.report_view import ReportView
from tests.core.llm.conftest import TEXT, save_tiny_causal_lm  # skips without transformers

RECIPE = """schema_version: 1
model: {{path: {model}}}
plan: {{layers: {{model.model.layers.0: {{sparsity: 0.5}}}}}}
data: {{source: text, path: text.txt, block_length: 24, calibration_samples: 4,
        prompt: "The quick", generate_tokens: 5}}
train: {{epochs: 0}}
export: {{latency_batch: 2, latency_repeats: 1}}
"""


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_report_shows_each_models_continuation(qtbot, tmp_path: Path) -> None:
    model = save_tiny_causal_lm(tmp_path / "tiny-llama", "llama")
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(model=model))
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    report = RunReport.from_json(data)
    view = ReportView()
    qtbot.addWidget(view)

    view.show_experiment(Experiment("e1", "tiny llama", "2026-11-30T08:00:00Z", report=data))

    shown = _flat(view.toPlainText())
    assert "Generated text (greedy)" in shown
    for name in ("baseline", "compressed"):
        written = getattr(report, name).generation
        assert written is not None and written["prompt"] == "The quick"
        assert _flat(f"{name}: The quick{written['text']}") in shown
    # a model that is not a causal LM has no such section
    del data["baseline"]["generation"], data["compressed"]["generation"]
    view.show_experiment(Experiment("e2", "plain", "2026-11-30T08:00:00Z", report=data))
    assert "Generated text" not in view.toPlainText()
