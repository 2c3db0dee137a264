"""Run core jobs from the GUI without freezing it: in a child process (long jobs) or a thread.

Both runners are a :class:`JobHandle`: ``start()``, ``cancel()``, ``shutdown()``, an ``event``
signal carrying the core's plain event dataclasses, and one ``finished(status, report, error)``
signal. The window never sees a traceback: every way a job can end becomes a status and a
readable sentence.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QCoreApplication,
    QObject,
    QProcess,
    QProcessEnvironment,
    QThread,
    QTimer,
    Signal,
)

from studio.core.errors import StudioError
from studio.core.jobs import CancelToken, Event, JobCancelled, Log, Result
from studio.core.jobs.child import child_command
from studio.core.jobs.events import event_from_json

FINISHED = "finished"
FAILED = "failed"
CANCELLED = "cancelled"

#: How long a cancelled child process gets to stop at its next batch before it is killed. Short,
#: because killing is safe (the child writes every output atomically, the report last) and a
#: distillation batch under CPU contention can take longer than the 1 s users accept for cancel.
KILL_AFTER_MS = 500
#: How long :meth:`JobHandle.shutdown` lets a child stop by itself (the window is closing, so
#: nothing is shown meanwhile) before it is killed.
SHUTDOWN_GRACE_MS = 3000
#: How long a killed child may take to be reaped: SIGKILL cannot be ignored, so this only bounds
#: a process stuck in the kernel.
REAP_AFTER_KILL_MS = 30_000
#: How many of a child's last stderr lines are kept to explain a failure.
STDERR_LINES = 200
UNTOUCHED = "the project and the model are untouched"


class JobHandle(QObject):
    """One job the GUI started: its events, its end, and a way to stop it."""

    event = Signal(object)  # a core Event (Progress, Metric, Log, Artifact, Result)
    finished = Signal(str, object, str)  # status, the result report or None, error text

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.status = "queued"
        self.report: dict[str, Any] | None = None
        self.error = ""
        self._started = False
        self._done = False

    @property
    def started(self) -> bool:
        return self._started

    @property
    def running(self) -> bool:
        return self._started and not self._done

    @property
    def done(self) -> bool:
        return self._done

    def start(self) -> None:
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop the job: a job not started yet ends at once, a running one is asked to stop."""
        if self._done:
            return
        if not self._started:
            self._finish(CANCELLED, None, "")
            return
        self._stop()

    def _stop(self) -> None:
        raise NotImplementedError

    def shutdown(self, grace_ms: int = SHUTDOWN_GRACE_MS) -> None:
        """Stop the job and block until its thread or process is gone and ``finished`` was
        emitted: for a closing window, whose blocked event loop fires no timer and delivers no
        queued signal, so :meth:`cancel`'s asynchronous steps would never complete. A child
        process still running after ``grace_ms`` is killed."""
        if self._done:
            return
        if not self._started:
            self._finish(CANCELLED, None, "")
            return
        self._shutdown(grace_ms)
        if not self._done:  # a killed process the kernel did not reap in time: stop waiting
            self._finish(CANCELLED, None, "")

    def _shutdown(self, grace_ms: int) -> None:
        raise NotImplementedError

    def wait(self, msecs: int = 5000) -> bool:
        """Block until the job's thread or process is gone (for quitting and tests)."""
        return True

    def _finish(self, status: str, report: dict[str, Any] | None, error: str) -> None:
        """Emit ``finished`` exactly once, whatever mix of signals led here."""
        if self._done:
            return
        self._done = True
        self.status, self.report, self.error = status, report, error
        self.finished.emit(status, report, error)


def _package_root() -> str:
    import studio

    return str(Path(studio.__file__).resolve().parent.parent)


class ProcessJob(JobHandle):
    """A job spec run by ``python -m studio.core.jobs.child`` in a :class:`QProcess`.

    The default for long jobs: a crash or an out-of-memory in the job cannot take the window
    down, and cancel is immediate because the process can always be killed.
    """

    def __init__(self, spec: dict[str, Any], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.spec = spec
        self.process = QProcess(self)
        self._spec_path: str | None = None
        self._stdout = b""
        self._stderr = b""
        self._stderr_lines: deque[str] = deque(maxlen=STDERR_LINES)
        self._error_logs: list[str] = []
        self._result: dict[str, Any] | None = None
        self._cancel_asked = False
        self._kill_timer = QTimer(self)
        self._kill_timer.setSingleShot(True)
        self._kill_timer.timeout.connect(self._kill)
        self.process.readyReadStandardOutput.connect(self._read_stdout)
        self.process.readyReadStandardError.connect(self._read_stderr)
        self.process.finished.connect(self._on_finished)
        self.process.errorOccurred.connect(self._on_error)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.status = "running"
        fd, self._spec_path = tempfile.mkstemp(prefix="studio-job-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(self.spec, handle)
        env = QProcessEnvironment.systemEnvironment()
        # The child imports the same ``studio`` as this window, installed or not.
        paths = [_package_root(), env.value("PYTHONPATH", "")]
        env.insert("PYTHONPATH", os.pathsep.join(p for p in paths if p))
        env.insert("PYTHONUNBUFFERED", "1")
        self.process.setProcessEnvironment(env)
        self.process.start(*self.command(self._spec_path))

    def command(self, spec_path: str) -> tuple[str, list[str]]:
        """The program and arguments that run the spec file (frozen or not: see
        :func:`studio.core.jobs.child.child_command`)."""
        return child_command(spec_path)

    def _stop(self) -> None:
        """Ask the child to stop at its next batch (SIGTERM); kill it if it has not in 0.5 s."""
        self._cancel_asked = True
        self.status = "cancelling"
        if self.process.state() == QProcess.ProcessState.NotRunning:
            return
        self.process.terminate()
        self._kill_timer.start(KILL_AFTER_MS)

    def _shutdown(self, grace_ms: int) -> None:
        """SIGTERM, wait ``grace_ms`` for the child to stop at its next batch, then SIGKILL and
        wait again; ``waitForFinished`` emits the process's ``finished`` before it returns."""
        self._stop()
        self._kill_timer.stop()  # it could not fire while this blocks: the kill comes below
        if not self.wait(grace_ms):
            self._kill()
            self.wait(REAP_AFTER_KILL_MS)

    def wait(self, msecs: int = 5000) -> bool:
        if self.process.state() == QProcess.ProcessState.NotRunning:
            return True
        return self.process.waitForFinished(msecs)

    def _kill(self) -> None:
        if self.process.state() != QProcess.ProcessState.NotRunning:
            self.process.kill()

    def _read_stdout(self) -> None:
        self._stdout += bytes(self.process.readAllStandardOutput().data())
        *lines, self._stdout = self._stdout.split(b"\n")
        for line in lines:
            self._handle_line(line)

    def _read_stderr(self) -> None:
        self._stderr += bytes(self.process.readAllStandardError().data())
        *lines, self._stderr = self._stderr.split(b"\n")
        self._stderr_lines.extend(line.decode("utf-8", "replace").rstrip() for line in lines)

    def _handle_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            return
        try:
            event = event_from_json(json.loads(text))
        except (ValueError, KeyError, TypeError):
            # Something in the job printed to stdout: keep it as a log line, not a failure.
            event = Log(text, "info")
        if isinstance(event, Log) and event.level == "error":
            self._error_logs.append(event.message)
        if isinstance(event, Result):
            self._result = event.report
        self.event.emit(event)
        if self._cancel_asked and isinstance(event, Log) and event.message == "cancelled":
            # The job has stopped and has nothing left to write; the interpreter's teardown
            # (torch's takes ~0.6 s) need not keep the user waiting.
            self._kill()

    def _on_finished(self, code: int, exit_status: QProcess.ExitStatus) -> None:
        self._kill_timer.stop()
        self._read_stdout()
        self._read_stderr()
        if self._stdout.strip():
            self._handle_line(self._stdout)
            self._stdout = b""
        if self._stderr.strip():
            self._stderr_lines.append(self._stderr.decode("utf-8", "replace").rstrip())
        self._remove_spec()
        crashed = exit_status == QProcess.ExitStatus.CrashExit
        if code == 0 and not crashed and self._result is not None:
            self._finish(FINISHED, self._result, "")
        elif self._cancel_asked or (code == 130 and not crashed):
            self._finish(CANCELLED, None, "")
        elif code == 1 and not crashed and self._error_logs:
            self._finish(FAILED, None, self._error_logs[-1])
        else:
            self._finish(FAILED, None, self._unexpected_end(code, crashed))

    def _unexpected_end(self, code: int, crashed: bool) -> str:
        how = "killed or crashed" if crashed else f"exit code {code}"
        if code == 0 and not crashed:
            how = "no result was reported"
        message = f"the job's process ended unexpectedly ({how}); {UNTOUCHED}"
        last = next((line for line in reversed(self._stderr_lines) if line.strip()), "")
        return f"{message}. Last message: {last}" if last else message

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._remove_spec()
            self._finish(FAILED, None,
                         f"the job's process could not start ({self.process.errorString()}); "
                         f"{UNTOUCHED}")

    def _remove_spec(self) -> None:
        if self._spec_path:
            Path(self._spec_path).unlink(missing_ok=True)
            self._spec_path = None

    @property
    def stderr_tail(self) -> list[str]:
        return list(self._stderr_lines)


JobFunction = Callable[[CancelToken], Iterator[Event]]


class _JobThread(QThread):
    """Runs the generator; emits plain data only (it never touches a widget or a model)."""

    event = Signal(object)
    ended = Signal(str, object, str)

    def __init__(self, function: JobFunction, token: CancelToken) -> None:
        super().__init__()
        self._function = function
        self._token = token

    def run(self) -> None:
        report: dict[str, Any] | None = None
        try:
            for event in self._function(self._token):
                if isinstance(event, Result):
                    report = event.report
                self.event.emit(event)
        except JobCancelled:
            self.ended.emit(CANCELLED, None, "")
        except StudioError as error:
            self.ended.emit(FAILED, None, str(error))
        except Exception as error:  # a bug in a job: one readable line, never a dialog
            self.ended.emit(FAILED, None, f"unexpected {type(error).__name__}: {error}")
        else:
            if self._token.cancelled and report is None:
                self.ended.emit(CANCELLED, None, "")
            else:
                self.ended.emit(FINISHED, report, "")


class ThreadJob(JobHandle):
    """A short job: a core generator function ``function(token)`` run in a worker thread.

    Cancel sets the :class:`CancelToken`; the job raises at its next batch.
    """

    def __init__(self, function: JobFunction, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.token = CancelToken()
        self._thread = _JobThread(function, self.token)
        # Bound methods of this GUI-thread object: the thread's signals arrive queued, here.
        self._thread.event.connect(self._forward)
        self._thread.ended.connect(self._ended)
        self.cancel_time: float | None = None

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.status = "running"
        self._thread.start()

    def _stop(self) -> None:
        self.cancel_time = time.monotonic()
        self.status = "cancelling"
        self.token.cancel()

    def _shutdown(self, grace_ms: int) -> None:
        """Cancel and wait for the thread however long its batch takes: a thread cannot be
        killed, and a QThread destroyed while it runs aborts the whole app. Then deliver its
        queued events and its end here and now."""
        self._stop()
        self._thread.wait()
        QCoreApplication.sendPostedEvents(self)

    def wait(self, msecs: int = 5000) -> bool:
        return self._thread.wait(msecs)

    def _forward(self, event: Event) -> None:
        if not self._done:
            self.event.emit(event)

    def _ended(self, status: str, report: object, error: str) -> None:
        self._thread.wait()
        self._finish(status, report if isinstance(report, dict) else None, error)
