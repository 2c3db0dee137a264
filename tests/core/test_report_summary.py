"""The report in plain rows and lines: figures with each latency batch named, parity, what
each stage cut and what stayed float and why."""

from __future__ import annotations

import dataclasses

from studio.core.reports.report_summary import (
    compare_rows,
    figure_rows,
    parity_lines,
    stage_sections,
)
from studio.core.reports.run_report import RunReport
from tests.core.test_run_report import _FIGURES

# Trimmed from a real demo run (50% channels, distillation, static int8).
STAGES = {
    "prune": {"excluded": ["head.2"],
              "structured": {"groups": [{"layers": ["res.conv2", "block2.0"],
                                         "followers": ["res.bn2", "head.2"],
                                         "channels_before": 64, "channels_after": 32}],
                             "skipped": [{"layers": ["res.conv1.0"],
                                          "reason": "coupled to an excluded layer"}]},
              "unstructured": {"layers": {"stem.0": {"sparsity": 0.5}}},
              "notes": ["Channels were removed: rebuild the layer tree."]},
    "recover": {"kind": "distill", "epochs": 1,
                "torch_metric": {"name": "accuracy", "value": 0.967},
                "distill": {"temperature": 4.0, "alpha": 0.7, "features": []}},
    "quantize": {"mode": "static", "calibration": "minmax", "per_channel": True,
                 "decisions": {"/stem/stem.0/Conv": "int8 static",
                               "/head/head.2/Gemm": "float (excluded)"}},
    "repair": {"steps": 0, "opset": 13},
}


def _report() -> RunReport:
    figures = {**_FIGURES, "agreement": {"cosine": 0.99, "top1_agreement": 0.98}}
    return RunReport.from_json({
        "model": "demo", "baseline": {"metric": {"name": "accuracy", "value": 0.985},
                                      **_FIGURES},
        "compressed": {"metric": {"name": "accuracy", "value": 0.967}, **figures,
                       "onnx_bytes": 33118, "latency_ms": {"batch_1": 0.1, "batch_8": 0.5}},
        "stages": STAGES, "notes": ["int4 convolutions run as int8."]})


def test_figures_name_each_batch_and_the_change() -> None:
    rows = {row.label: row for row in figure_rows(_report())}
    assert rows["accuracy"].values == ("98.50%", "96.70%")
    assert rows["accuracy"].change == "-1.80 points"
    assert rows["ONNX file"].values == ("110 KiB", "32.3 KiB")
    assert rows["ONNX file"].change == "0.294×"
    assert rows["latency, batch 8 (ms)"].values == ("1.12", "0.5")
    assert list(rows)[-2:] == ["latency, batch 1 (ms)", "latency, batch 8 (ms)"]


def test_parity_and_stage_words() -> None:
    report = _report()
    assert parity_lines(report)[0].startswith("ONNX file vs the torch model")
    assert "top-1 agreement 98.0%" in parity_lines(report)[1]
    sections = dict(stage_sections(report))
    assert list(sections) == ["prune", "recover", "quantize", "repair"]
    assert sections["prune"][0] == ("Cut res.conv2, block2.0: 64 → 32 channels (also narrows "
                                    "res.bn2, head.2)")
    assert sections["prune"][1] == "Left whole res.conv1.0: coupled to an excluded layer"
    assert "Zeroed 50% of stem.0's weights" in sections["prune"]
    assert sections["prune"][-1] == "Channels were removed: rebuild the layer tree."
    assert sections["quantize"] == ["Quantized: static (minmax, per channel)",
                                    "int8 static: /stem/stem.0/Conv",
                                    "Stayed float (excluded): /head/head.2/Gemm"]
    assert sections["recover"][0].startswith("Distill for 1 epoch(s)")
    assert sections["repair"] == ["steps: 0", "opset: 13"]


def test_compare_puts_two_experiments_side_by_side() -> None:
    report = _report()
    other = dataclasses.replace(report, compressed=report.baseline)
    rows = {row.label: row for row in compare_rows([report, other])}
    assert rows["accuracy"].values == ("96.70%", "98.50%")
    assert rows["latency, batch 8 (ms)"].values == ("0.5", "1.12")
