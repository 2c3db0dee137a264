"""Run one job in a child process and stream its events as JSON lines on stdout.

``python -m studio.core.jobs.child SPEC.json``: the GUI's default for long jobs, so a crash or an
out-of-memory in a job never takes the window down, and cancel is immediate (the parent ends the
process; the job writes nothing half-done because every output is written atomically).

The spec is a :class:`JobSpec` as JSON; its ``kind`` names one of the registered kinds
(``studio.core.jobs.kinds``). A failure is reported as one ``log`` event with level ``error``
and exit code 1; a traceback goes to stderr.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path

from studio.core.errors import StudioError
from studio.core.jobs.cancel import CancelToken, JobCancelled
from studio.core.jobs.events import Event, Log, event_to_json
from studio.core.jobs.kinds import JobSpec, job_events

EXIT_FAILED = 1
EXIT_CANCELLED = 130


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


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written and flushed: skip the interpreter's shutdown, which takes 0.6-0.8 s
    # with torch loaded and would hold up every finished or cancelled job.
    os._exit(code)
