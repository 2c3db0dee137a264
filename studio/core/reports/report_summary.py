"""A run report in plain rows and lines: what the window's report view and its comparison of
two experiments show (the CLI prints its own table of the same figures).

Kept apart from the view so the words (what was cut, what stayed float and why) are tested
without Qt and read the same wherever they are shown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from studio.core.reports.run_report import Figures, RunReport
from studio.core.units import format_bytes, format_count

Formatter = Callable[[float], str]


@dataclass(frozen=True)
class FigureRow:
    label: str
    values: tuple[str, ...]
    """One text per model (baseline and compressed, or one per compared experiment)."""
    change: str = ""
    """The last value against the first (×, or points for the metric)."""


def _metric_text(figures: Figures) -> str:
    value = figures.metric.value
    return f"{value * 100:.2f}%" if figures.metric.name == "accuracy" else f"{value:.4g}"


def _ratio(first: float | None, last: float | None) -> str:
    if first is None or last is None or not first:
        return ""
    return f"{last / first:.3g}×"


def _figure_rows(figures: Sequence[Figures]) -> list[FigureRow]:
    """Rows over any number of measured files, the first being the reference."""
    first, last = figures[0], figures[-1]
    metric = first.metric.name
    drop = (last.metric.value - first.metric.value) * (100 if metric == "accuracy" else 1)
    rows = [FigureRow(metric, tuple(_metric_text(f) for f in figures),
                      f"{drop:+.2f} points" if metric == "accuracy" else f"{drop:+.4g}")]
    sized: list[tuple[str, str, Formatter]] = [
        ("params", "params", format_count), ("nonzero params", "nonzero_params", format_count),
        ("MACs", "macs", format_count), ("ONNX file", "onnx_bytes", format_bytes),
        ("zipped file", "zip_bytes", format_bytes)]
    for label, key, formatter in sized:
        values = [float(getattr(f, key)) for f in figures]
        rows.append(FigureRow(label, tuple(formatter(v) for v in values),
                              _ratio(values[0], values[-1])))
    batches = sorted({key for f in figures for key in f.latency_ms},
                     key=lambda key: int(key.split("_")[-1]) if key.split("_")[-1].isdigit()
                     else 0)
    for key in batches:
        values = [f.latency_ms.get(key) for f in figures]
        rows.append(FigureRow(f"latency, batch {key.split('_')[-1]} (ms)",
                              tuple("—" if v is None else f"{v:.3g}" for v in values),
                              _ratio(values[0], values[-1])))
    return rows


def figure_rows(report: RunReport) -> list[FigureRow]:
    """Baseline against compressed: the metric, sizes, MACs and latency at each batch."""
    return _figure_rows([report.baseline, report.compressed])


def compare_rows(reports: Sequence[RunReport]) -> list[FigureRow]:
    """The compressed figures of several experiments side by side (change: last vs first)."""
    return _figure_rows([report.compressed for report in reports])


def parity_lines(report: RunReport) -> list[str]:
    """How closely the ONNX file follows the torch model it came from, and the compressed
    model the uncompressed one."""
    lines = []
    parity = report.compressed.parity
    if parity.get("max_abs_diff") is not None:
        lines.append(f"ONNX file vs the torch model it was exported from: largest output "
                     f"difference {parity['max_abs_diff']:.3g}"
                     + (f", top-1 agreement {parity['top1_agreement'] * 100:.1f}%"
                        if parity.get("top1_agreement") is not None else ""))
    # A measure that does not apply to these outputs is None (top-1 of a causal LM's logits)
    agreement = {name: value for name, value in (report.compressed.agreement or {}).items()
                 if value is not None}
    if agreement:
        parts = [f"{name} {value:.4g}" if name != "top1_agreement"
                 else f"top-1 agreement {value * 100:.1f}%" for name, value in agreement.items()]
        lines.append("Compressed vs uncompressed outputs on the test data: " + ", ".join(parts))
    return lines


def generations(report: RunReport) -> list[tuple[str, str, str]]:
    """(``baseline`` or ``compressed``, prompt, continuation) of a causal LM's report: the
    text each model wrote, which says what its perplexity means; empty for other models."""
    return [(name, figures.generation.get("prompt", ""), figures.generation.get("text", ""))
            for name, figures in (("baseline", report.baseline),
                                  ("compressed", report.compressed))
            if figures.generation]


def _layers(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _prune_lines(stage: Mapping[str, Any]) -> list[str]:
    lines = []
    structured = stage.get("structured") or {}
    for group in structured.get("groups") or []:
        followers = group.get("followers") or []
        lines.append(f"Cut {_layers(group.get('layers') or [])}: {group.get('channels_before')}"
                     f" → {group.get('channels_after')} channels"
                     + (f" (also narrows {_layers(followers, 4)})" if followers else ""))
    for skipped in structured.get("skipped") or []:
        lines.append(f"Left whole {_layers(skipped.get('layers') or [])}: "
                     f"{skipped.get('reason', 'no reason given')}")
    for key, label in (("unstructured", "zeroed"), ("nm", "N:M sparsity in")):
        for layer, entry in ((stage.get(key) or {}).get("layers") or {}).items():
            sparsity = entry.get("sparsity") if isinstance(entry, Mapping) else entry
            amount = f" {float(sparsity) * 100:.0f}% of" if isinstance(sparsity, float) else ""
            lines.append(f"{label.capitalize()}{amount} {layer}'s weights" if key ==
                         "unstructured" else f"{label} {layer}")
    if stage.get("excluded"):
        lines.append(f"Not pruned (excluded in the plan): {_layers(stage['excluded'])}")
    return lines


def _quantize_lines(stage: Mapping[str, Any]) -> list[str]:
    lines = []
    mode = stage.get("mode")
    if mode:
        details = [str(stage[key]) for key in ("calibration",) if stage.get(key)]
        if stage.get("per_channel"):
            details.append("per channel")
        lines.append(f"Quantized: {mode}" + (f" ({', '.join(details)})" if details else ""))
    by_choice: dict[str, list[str]] = {}
    for node, choice in (stage.get("decisions") or {}).items():
        by_choice.setdefault(str(choice), []).append(str(node))
    for choice, nodes in sorted(by_choice.items(), key=lambda item: item[0].startswith("float")):
        stayed = "Stayed " if choice.startswith("float") else ""
        lines.append(f"{stayed}{choice}: {_layers(nodes)}")
    for node, bits in (stage.get("matmul_nbits") or {}).items():
        lines.append(f"{node}: {bits}-bit weights (MatMulNBits)")
    return lines


def _recover_lines(stage: Mapping[str, Any]) -> list[str]:
    lines = [f"{str(stage.get('kind', 'fine-tune')).capitalize()} for "
             f"{stage.get('epochs', '?')} epoch(s)"]
    metric = stage.get("torch_metric")
    if isinstance(metric, Mapping) and metric.get("value") is not None:
        lines[0] += f"; the torch model reached {metric.get('name')} {metric['value']:.4g}"
    distill = stage.get("distill")
    if isinstance(distill, Mapping):
        lines.append("Distillation: " + ", ".join(f"{k} {v}" for k, v in distill.items()
                                                 if v not in (None, [], {})))
    return lines


def _generic_lines(stage: Any) -> list[str]:
    if not isinstance(stage, Mapping):
        return [str(stage)]
    return [f"{key}: {value}" for key, value in stage.items()
            if key != "notes" and isinstance(value, (str, int, float, bool)) and value != ""]


STAGE_WORDS: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "prune": _prune_lines, "quantize": _quantize_lines, "recover": _recover_lines}
"""Stage name -> its lines; another stage shows its plain fields."""


def stage_sections(report: RunReport) -> list[tuple[str, list[str]]]:
    """What each stage did, in the order they ran, with the stage's own notes last."""
    sections = []
    for name, stage in report.stages.items():
        words = STAGE_WORDS.get(name, _generic_lines)
        lines = words(stage) if isinstance(stage, Mapping) else _generic_lines(stage)
        if isinstance(stage, Mapping):
            lines += [str(note) for note in stage.get("notes") or []]
            structured = stage.get("structured")
            if isinstance(structured, Mapping):
                lines += [str(note) for note in structured.get("notes") or []]
        sections.append((name, lines or ["(nothing to say)"]))
    return sections
