"""Cooperative cancellation: jobs call ``token.check()`` at every batch."""

from __future__ import annotations

import threading


class JobCancelled(Exception):
    """Raised inside a job by :meth:`CancelToken.check` once cancel was asked for."""


class CancelToken:
    """Thread-safe flag set by the GUI, the CLI (Ctrl-C) or a test, read by the job."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise JobCancelled("cancelled")
