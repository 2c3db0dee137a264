"""Garbage made in a worker thread is collected in the GUI thread, never in the worker."""

from __future__ import annotations

import gc
import threading
from typing import ClassVar

from PySide6.QtCore import QThread
from PySide6.QtWidgets import QApplication

from studio.qt.gui_thread_gc import collect_garbage_in_gui_thread


class _Cycle:
    """A reference cycle that records the thread which freed it."""

    freed_in: ClassVar[list[str]] = []

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        _Cycle.freed_in.append(threading.current_thread().name)


def test_cycles_made_in_a_worker_are_freed_by_the_gui_thread(qtbot, qapp: QApplication) -> None:
    collector = collect_garbage_in_gui_thread(qapp)
    assert collect_garbage_in_gui_thread(qapp) is collector  # installed once
    assert not gc.isenabled()
    _Cycle.freed_in.clear()

    def make_garbage() -> None:
        # Far past the first threshold: with automatic collection on, this thread would collect.
        for _ in range(collector.thresholds[0] * 5):
            _Cycle()

    worker = threading.Thread(target=make_garbage, name="worker")
    worker.start()
    worker.join()
    assert _Cycle.freed_in == []  # nothing was collected in the worker
    qtbot.waitUntil(lambda: len(_Cycle.freed_in) >= collector.thresholds[0], timeout=60_000)
    assert set(_Cycle.freed_in) == {threading.main_thread().name}


def test_the_collector_is_installed_from_the_gui_thread_only(qapp: QApplication) -> None:
    errors: list[Exception] = []

    class Installer(QThread):
        def run(self) -> None:
            try:
                collect_garbage_in_gui_thread(qapp)
            except RuntimeError as error:
                errors.append(error)

    installer = Installer()
    installer.start()
    installer.wait()
    assert errors and "GUI thread" in str(errors[0])
