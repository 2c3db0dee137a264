"""Run a job in this process for a CLI command: Ctrl+C cancels it at its next batch, and its
events go to stdout as JSON lines (``--jsonl``) or to a human-readable printer."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

from studio.core.jobs import CancelToken, Event, Result
from studio.core.jobs.events import event_to_json
from studio.core.jobs.kinds import JobSpec, job_events


def stream_job(spec: JobSpec, printer: Callable[[Event], None], jsonl: bool) -> Result | None:
    """The job's result event (None when it ends without one); raises JobCancelled on Ctrl+C,
    with the previous SIGINT handler restored."""
    token = CancelToken()
    previous = signal.signal(signal.SIGINT, lambda *_: token.cancel())
    result: Result | None = None
    try:
        for event in job_events(spec, token):
            if jsonl:
                print(json.dumps(event_to_json(event)), flush=True)
            else:
                printer(event)
            if isinstance(event, Result):
                result = event
    finally:
        signal.signal(signal.SIGINT, previous)
    return result
