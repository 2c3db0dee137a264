"""Run one job in a child process and stream its events as JSON lines on stdout.

``python -m studio.core.jobs.child SPEC.json``: the GUI's default for long jobs, so a crash or an
out-of-memory in a job never takes the window down, and cancel is immediate (the parent ends the
process; the job writes nothing half-done because every output is written atomically).

The spec is a :class:`JobSpec` as JSON; its ``kind`` names one of the registered kinds
(``studio.core.jobs.kinds``). A data function runs only when ``data_consent`` lists its code
(``FunctionCode.to_json``: module files and their sha256), checked again here, so code changed
or swapped since the user allowed it does not run. A failure is reported as one ``log`` event
with level ``error`` and exit code 1; a traceback goes to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from studio.core.data.consent import FunctionCode, check_consent
from studio.core.errors import StudioError
from studio.core.jobs import kinds
from studio.core.jobs.cancel import CancelToken, JobCancelled
from studio.core.jobs.events import Event, Log, event_to_json
from studio.core.jobs.kinds import JobSpec

EXIT_FAILED = 1
EXIT_CANCELLED = 130
JOB_SWITCH = "--job"
"""How a frozen bundle's command-line executable is told to run a job instead of a command."""
FROZEN_CLI = "compression-studio-cli"
"""The console executable beside a frozen app (packaging/compression-studio.spec); the GUI's
own executable may have no standard output (Windows' windowed mode), so jobs run in this one."""


def child_command(spec_path: str) -> tuple[str, list[str]]:
    """The program and arguments that run the job in ``spec_path`` in a child process. A frozen
    app (PyInstaller sets ``sys.frozen``) has no ``python -m``: its console executable takes a
    ``--job SPEC`` switch instead."""
    if getattr(sys, "frozen", False):
        suffix = ".exe" if sys.platform == "win32" else ""
        return str(Path(sys.executable).with_name(FROZEN_CLI + suffix)), [JOB_SWITCH, spec_path]
    return sys.executable, ["-m", "studio.core.jobs.child", spec_path]


def job_events(spec: JobSpec, token: CancelToken) -> Iterator[Event]:
    """The events of the job ``spec`` describes, once the code it may run is verified."""
    yield from kinds.job_events(dataclasses.replace(spec, trust_data=_data_allowed(spec)), token)


def _data_allowed(spec: JobSpec) -> bool:
    """Whether the job's data function may run: only once it is verified to be the code the
    user allowed (:class:`FunctionTrustRequired` when it is not). This never widens the trust
    in the model file, which stays the spec's own."""
    data = spec.recipe.data
    if data is None or data.source != "function":
        return False
    check_consent(data, spec.base_dir,
                  [FunctionCode.from_json(code) for code in spec.data_consent])
    return True


def _emit(event: Event) -> None:
    sys.stdout.write(json.dumps(event_to_json(event)) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    token = CancelToken()
    signal.signal(signal.SIGTERM, lambda *_: token.cancel())
    try:
        spec = JobSpec.from_json(json.loads(Path(args[0]).read_text(encoding="utf-8")))
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


def run_and_exit(argv: list[str] | None = None) -> None:
    """Run the job and end the process without the interpreter's shutdown: everything is
    written and flushed, and shutting down with torch loaded takes 0.6-0.8 s that would hold up
    every finished or cancelled job."""
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run_and_exit()
