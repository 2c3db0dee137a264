"""Run one job in a child process and stream its events as JSON lines on stdout.

``python -m studio.core.jobs.child SPEC.json``: the GUI's default for long jobs, so a crash or an
out-of-memory in a job never takes the window down, and cancel is immediate (the parent ends the
process; the job writes nothing half-done because every output is written atomically).

The spec: ``{"kind": "run" | "sensitivity" | "check_data", "recipe": {...recipe as YAML/JSON
data...}, "base_dir": str | null, "out_dir": str, "device": str | null, "trust": bool,
"data_consent": [...], "options": {...}}``; ``check_data`` also takes ``"vocabulary": [what,
size]`` and leaves its probe samples in ``out_dir``. ``trust`` is the consent the user gave in
the window to a pickled model; without it the child refuses to unpickle, as the CLI does without
``--trust``. A data function runs only when ``data_consent`` lists its code
(``FunctionCode.to_json``: module files and their sha256), checked again here, so code changed or
swapped since the user allowed it does not run.
A failure is reported as one ``log`` event with level ``error`` and exit code 1; a traceback
goes to stderr.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from studio.core.data.consent import FunctionCode, check_consent
from studio.core.errors import StudioError
from studio.core.jobs.cancel import CancelToken, JobCancelled
from studio.core.jobs.events import Event, Log, event_to_json
from studio.core.plan.recipe import Recipe

EXIT_FAILED = 1
EXIT_CANCELLED = 130


def job_events(spec: dict[str, Any], token: CancelToken) -> Iterator[Event]:
    """The events of the job ``spec`` describes (imports each kind's engine lazily)."""
    recipe = Recipe.model_validate(spec["recipe"])
    base_dir = Path(spec["base_dir"]) if spec.get("base_dir") else None
    kind = spec.get("kind", "run")
    trust = _allowed_code(spec, recipe, base_dir)
    if kind == "run":
        from studio.core.engine.run import run_recipe

        yield from run_recipe(recipe, base_dir, Path(spec["out_dir"]), token, trust=trust,
                              device=spec.get("device"))
    elif kind == "sensitivity":
        from studio.core.engine.sensitivity import sensitivity_job

        yield from sensitivity_job(recipe, base_dir, token, device=spec.get("device"),
                                   trust=trust, **spec.get("options", {}))
    elif kind == "check_data":
        from studio.core.engine.data_check import data_check_job

        yield from data_check_job(recipe, base_dir, Path(spec["out_dir"]), token, trust=trust,
                                  vocabulary=spec.get("vocabulary"))
    else:
        raise StudioError(f"unknown job kind {kind!r}")


def _allowed_code(spec: dict[str, Any], recipe: Recipe, base_dir: Path | None) -> bool:
    """The job's ``trust``: the spec's own, or True once the data function is verified to be
    the code the user allowed (:class:`FunctionTrustRequired` when it is not)."""
    if recipe.data is None or recipe.data.source != "function":
        return bool(spec.get("trust", False))
    allowed = [FunctionCode.from_json(code) for code in spec.get("data_consent", [])]
    check_consent(recipe.data, base_dir, allowed)
    return True


def _emit(event: Event) -> None:
    sys.stdout.write(json.dumps(event_to_json(event)) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    token = CancelToken()
    signal.signal(signal.SIGTERM, lambda *_: token.cancel())
    try:
        spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
        for event in job_events(spec, token):
            _emit(event)
    except JobCancelled:
        _emit(Log("cancelled", "warning"))
        return EXIT_CANCELLED
    except StudioError as error:
        _emit(Log(str(error), "error"))
        return EXIT_FAILED
    except Exception as error:  # a bug: say it in one line, keep the traceback on stderr
        _emit(Log(f"unexpected {type(error).__name__}: {error}", "error"))
        traceback.print_exc()
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written and flushed: skip the interpreter's shutdown, which takes 0.6-0.8 s
    # with torch loaded and would hold up every finished or cancelled job.
    os._exit(code)
