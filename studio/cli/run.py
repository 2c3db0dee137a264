"""``compression-studio run RECIPE --out DIR``: carry out a recipe headless, as the GUI would."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from studio.core.jobs import Event, JobCancelled, Log, Metric, Progress


def add_run_command(commands: Any, common: argparse.ArgumentParser) -> None:
    run = commands.add_parser(
        "run", parents=[common], help="run a recipe: compress, export ONNX, measure",
        description="Carry out RECIPE (YAML): prune, recover with fine-tuning or distillation, "
                    "quantize, export ONNX and measure it against the original. Writes "
                    "DIR/model.onnx, DIR/report.json and DIR/splits.json (which samples "
                    "were used for what).")
    run.add_argument("recipe", type=Path, help="recipe file (YAML, schema_version 1)")
    run.add_argument("--out", type=Path, required=True, help="folder for model.onnx and "
                     "report.json (created if missing; an earlier run's outputs there are "
                     "replaced as a unit, other files left alone)")
    run.add_argument("--device", help="cpu, cuda or auto; overrides the recipe's train.device")
    run.add_argument("--trust", action="store_true",
                     help="allow unpickling a whole module, a data source that is a Python "
                          "function, or a model architecture outside the studio's own that "
                          "the recipe names (all run code)")
    run.add_argument("--jsonl", action="store_true",
                     help="print every event as one JSON line on stdout (for other programs)")
    run.set_defaults(handler=run_command)


class ProgressPrinter:
    """A one-line progress bar per stage on a terminal; plain lines when piped."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.stage = ""

    def __call__(self, event: Event) -> None:
        if isinstance(event, Progress):
            if event.stage != self.stage:
                self._end_line()
                self.stage = event.stage
            if self.live:
                width = 30
                filled = int(width * event.done / max(1, event.total))
                bar = "#" * filled + "-" * (width - filled)
                self.stream.write(f"\r{event.stage:<16} [{bar}] {event.done}/{event.total}")
                self.stream.flush()
            elif event.done == event.total:
                self.stream.write(f"{event.stage}: {event.done}/{event.total} done\n")
        elif isinstance(event, Log):
            self._end_line()
            self.stream.write(f"{event.message}\n")
        elif isinstance(event, Metric) and event.name != "loss":
            self._end_line()
            self.stream.write(f"{event.stage}: {event.name} = {event.value:.4g}\n")

    def _end_line(self) -> None:
        if self.live and self.stage:
            self.stream.write("\n")
            self.stage = ""


def run_command(args: argparse.Namespace) -> int:
    from studio.cli.stream import stream_job
    from studio.core.jobs.kinds import JobSpec
    from studio.core.plan.recipe import read_recipe

    spec = JobSpec("run", read_recipe(args.recipe), args.recipe.parent, args.out, args.device,
                   args.trust, source=str(args.recipe), trust_data=args.trust)
    printer = ProgressPrinter(sys.stderr)
    try:
        result = stream_job(spec, printer, args.jsonl)
    except JobCancelled:
        print("compression-studio: cancelled; nothing was written over earlier results",
              file=sys.stderr)
        return 130
    if result is not None and not args.jsonl:
        print(summary(result.report))
    return 0


def summary(report: dict[str, Any]) -> str:
    """The report's headline figures as a small table."""
    base, comp = report["baseline"], report["compressed"]
    rows = [("", "baseline", "compressed", "ratio")]
    metric = base["metric"]["name"]
    before, after = base["metric"]["value"], comp["metric"]["value"]
    rows.append((metric, f"{before:.4f}", f"{after:.4f}",
                 f"{after / before:.3f}×" if metric == "perplexity" and before
                 else f"{after - before:+.4f}"))
    for key in ("params", "nonzero_params", "macs", "onnx_bytes", "zip_bytes"):
        rows.append((key, f"{base[key]:,}", f"{comp[key]:,}",
                     f"{comp[key] / base[key]:.3f}×" if base[key] else ""))
    for batch, value in base["latency_ms"].items():
        other = comp["latency_ms"][batch]
        rows.append((f"latency {batch} (ms)", f"{value:.3f}", f"{other:.3f}",
                     f"{other / value:.3f}×" if value else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in rows]
    data = report.get("data")
    if isinstance(data, dict):
        kind = ("labelled" if data.get("labelled") else "text: perplexity, lower is better"
                if data.get("metric") == "perplexity" else
                "unlabelled: agreement with the original")
        lines.append(f"data: {data.get('name')} ({kind}; {data['sizes'].get('test')} test "
                     "samples)")
    for name in ("baseline", "compressed"):
        sample = report[name].get("generation")
        if sample:
            lines.append(f"{name} writes: {sample['prompt']!r} → {sample['text']!r}")
    lines += [f"note: {note}" for note in report.get("notes", [])]
    lines.append(f"wrote {report['paths']['model']} and {report['paths']['report']}")
    return "\n".join(lines)
