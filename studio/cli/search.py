"""``compression-studio search RECIPE --trials N --out DIR``: search the recipe's plan for the
best trade-offs of the metric against size, MACs or latency; running it again on the same
folder resumes the search."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from studio.core.jobs import Event, JobCancelled, Log, Progress
from studio.core.jobs.events import Trial

SUPERNET_EVERY = 20
"""Print every this many supernet steps."""


def add_search_command(commands: Any, common: argparse.ArgumentParser) -> None:
    search = commands.add_parser(
        "search", parents=[common], help="search plans: metric against size, MACs or latency",
        description="Search RECIPE's plan (per-group sparsity and granularity, per-layer "
                    "bits) with Optuna: a cheap zero-shot proxy for every trial, the whole "
                    "pipeline for the most promising, scored on a validation split carved from "
                    "the training data. The study lives in DIR/search.db; run again to resume. "
                    "--space subnet trains a once-for-all supernet (DIR/supernet.pt) and "
                    "searches its widths and depths instead of the plan.")
    search.add_argument("recipe", type=Path, help="recipe file (YAML, schema_version 1)")
    search.add_argument("--out", type=Path, required=True,
                        help="folder of the study (search.db, trials/, experiments/)")
    search.add_argument("--trials", type=int, default=40, help="trials in the whole study")
    search.add_argument("--minutes", type=float, help="stop this run after M minutes")
    search.add_argument("--workers", type=int, default=1, help="local worker processes")
    search.add_argument("--ray-address",
                        help="run trials on Ray: 'local', 'auto' or host:port of a cluster")
    search.add_argument("--cost", action="append", choices=("bytes", "macs", "latency"),
                        help="what to shrink, as a ratio to the original (repeatable; "
                             "default bytes)")
    search.add_argument("--max-drop", type=float,
                        help="constraint: largest metric drop in points (with one --cost: "
                             "TPE under the constraint instead of an NSGA-II front)")
    search.add_argument("--max-ratio", type=float,
                        help="constraint: largest ratio of the first cost (0.5: half)")
    search.add_argument("--population", type=int, default=8,
                        help="trials per generation (the same for any number of workers)")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--layers", type=_names, help="layers searched, comma-separated "
                        "(default: every prunable layer)")
    search.add_argument("--granularities", type=_names, default=["channels"],
                        help="granularities offered, comma-separated (default channels: "
                             "unstructured zeros lower no cost of the exported file)")
    search.add_argument("--bits", type=_names, default=["fp32", "int8"],
                        help="weight bits offered, comma-separated (default fp32,int8)")
    search.add_argument("--sparsity-levels", type=_levels, default=[0.0, 0.25, 0.5, 0.75],
                        help="sparsity levels offered (default 0,0.25,0.5,0.75)")
    search.add_argument("--validation-samples", type=int, default=500,
                        help="training samples held out to score trials on")
    search.add_argument("--full-epochs", type=int, default=1,
                        help="recovery epochs of a full-fidelity trial")
    search.add_argument("--seed-recipe", type=Path, action="append", dest="seed_recipes",
                        metavar="RECIPE",
                        help="start a new search with this recipe's plan among its first "
                             "trials (repeatable; a resumed search ignores it)")
    search.add_argument("--proxy-only", action="store_true",
                        help="no full-fidelity trials (no recovery, export or timing)")
    search.add_argument("--space", choices=("plan", "subnet"), default="plan",
                        help="plan: per-layer sparsity and bits; subnet: train a once-for-all "
                             "supernet from the model (once per --out folder), then search its "
                             "widths and depths without retraining each")
    search.add_argument("--widths", type=_levels, default=[0.25, 0.5, 0.75, 1.0],
                        help="subnet: shares of each channel group kept (default "
                             "0.25,0.5,0.75,1)")
    search.add_argument("--supernet-epochs", type=int, default=4,
                        help="subnet: epochs of supernet training (progressive shrinking)")
    search.add_argument("--no-skip-blocks", action="store_true",
                        help="subnet: keep every residual block (width only)")
    search.add_argument("--trust", action="store_true",
                        help="allow code from the model or data files to run (as for run)")
    search.add_argument("--jsonl", action="store_true",
                        help="print every event as one JSON line on stdout")
    search.set_defaults(handler=search_command)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _levels(text: str) -> list[float]:
    try:
        return [float(value) for value in _names(text)]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers such as 0.25,0.5,1"
                                         ) from error


def options_of(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {
        "trials": args.trials, "workers": args.workers, "population": args.population,
        "seed": args.seed, "full_epochs": args.full_epochs, "layers": args.layers,
        "granularities": args.granularities, "bits": args.bits,
        "sparsity_levels": args.sparsity_levels,
        "validation_samples": args.validation_samples,
        "full_fidelity": not args.proxy_only, "costs": args.cost or ["bytes"],
        "space": args.space, "widths": args.widths, "supernet_epochs": args.supernet_epochs,
        "skip_blocks": not args.no_skip_blocks}
    if args.seed_recipes:
        options["seed_recipes"] = [str(path) for path in args.seed_recipes]
    for key, value in (("minutes", args.minutes), ("ray_address", args.ray_address),
                       ("max_drop_pt", args.max_drop), ("max_cost_ratio", args.max_ratio)):
        if value is not None:
            options[key] = value
    return options


class SearchPrinter:
    """A line per finished trial with the count and the time left (from this run's pace)."""

    def __init__(self, stream: TextIO, minutes: float | None) -> None:
        self.stream, self.started = stream, time.monotonic()
        self.deadline = None if minutes is None else self.started + 60 * minutes
        self.first_done: int | None = None
        self._pending = ""
        """The last trial's line, printed with the count and time left that follow it."""
        from studio.core.methods.elastic.training import STAGE  # the job imports it anyway

        self.supernet_stage = STAGE
        """A subnet search's supernet training reports steps, not trials."""

    def left(self, done: int, total: int) -> str:
        if self.first_done is None:
            self.first_done = done - 1
        elapsed = time.monotonic() - self.started
        per_trial = elapsed / max(1, done - self.first_done)
        seconds = per_trial * max(0, total - done)
        if self.deadline is not None:
            seconds = min(seconds, max(0.0, self.deadline - time.monotonic()))
        return f"~{int(seconds // 60)} min {int(seconds % 60):02d} s left"

    def __call__(self, event: Event) -> None:
        if isinstance(event, Log):
            self.stream.write(f"{event.message}\n")
        elif isinstance(event, Trial) and event.state != "running":
            if event.state == "failed":
                text = f"failed: {event.reason}"
            else:
                text = ", ".join(f"{key} {value:.3g}" for key, value in event.figures.items()
                                 if key in ("drop_pt", "bytes", "macs", "latency"))
            self._pending = f"trial {event.number} {event.fidelity}: {text}"
            if event.fidelity == "full":
                self.stream.write(self._pending + "\n")
        elif isinstance(event, Progress) and event.stage == self.supernet_stage:
            if event.done % SUPERNET_EVERY == 0 or event.done == event.total:
                self.stream.write(f"supernet: step {event.done}/{event.total}\n")
        elif isinstance(event, Progress):
            self.stream.write(f"{self._pending} [{event.done}/{event.total}, "
                              f"{self.left(event.done, event.total)}]\n")
        self.stream.flush()


def search_command(args: argparse.Namespace) -> int:
    from studio.cli.stream import stream_job
    from studio.core.jobs.kinds import JobSpec
    from studio.core.plan.recipe import read_recipe

    spec = JobSpec("search", read_recipe(args.recipe), args.recipe.parent, args.out,
                   trust=args.trust, options=options_of(args), source=str(args.recipe),
                   trust_data=args.trust)
    printer = SearchPrinter(sys.stderr, args.minutes)
    try:
        result = stream_job(spec, printer, args.jsonl)
    except JobCancelled:
        print(f"compression-studio: cancelled; finished trials are kept in {args.out} (run "
              "again to resume)", file=sys.stderr)
        return 130
    if result is not None and not args.jsonl:
        print(front_table(result.report))
    return 0


def front_table(report: dict[str, Any]) -> str:
    """The full-fidelity trials no other beats, as a small table."""
    from studio.core.search.front import full_front

    rows = full_front(report["trials"], report["objectives"])
    lines = [f"{len(report['trials'])} trials in {report['study']}; "
             f"{report['evaluated']} evaluated in this run ({report['elapsed_s']} s)"]
    if not rows:
        lines.append("no full-fidelity trial finished yet")
        return "\n".join(lines)
    lines.append("front (full fidelity, validation split):")
    for row in rows:
        figures = ", ".join(f"{key} {row['figures'][key]:.3g}"
                            for key in ("drop_pt", "bytes", "macs", "latency"))
        lines.append(f"  trial {row['number']}: {figures} (experiment {row['experiment']})")
    return "\n".join(lines)
