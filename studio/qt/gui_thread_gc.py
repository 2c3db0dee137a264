"""Python's cyclic garbage collector, run only in the GUI thread.

Why: a collection runs in whichever thread happens to allocate when a threshold is crossed. When
that is a worker thread (tracing a model, say) and the garbage holds a closed Qt window, the
worker frees the widget: PySide 6.11 hands the deletion to the GUI thread while the worker waits
for the GIL inside ``~QObject``, and the two threads wait for each other for ever. Seen as a CI
run that hung: the worker in Torch-Pruning's graph build, the GUI thread in ``QMenu``'s
destructor. With automatic collection off and a timer collecting in the GUI thread, Qt objects
are only ever freed there.

Written by hand (a timer and three thresholds); the pattern is the one long-lived PyQt
applications use for the same reason.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QCoreApplication, QObject, QThread, QTimer

INTERVAL_MS = 500
"""How often the GUI thread looks at the allocation counts; garbage waits at most this long."""


class GuiThreadGarbageCollector(QObject):
    """Turns automatic collection off and collects, generation by generation, from a timer."""

    def __init__(self, parent: QObject) -> None:
        super().__init__(parent)
        self.thresholds = gc.get_threshold()
        gc.disable()
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.collect_if_due)
        self.timer.start(INTERVAL_MS)

    def collect_if_due(self) -> int:
        """Collect the oldest generation whose count passed its threshold; the number freed."""
        counts = gc.get_count()
        for generation in (2, 1, 0):
            if counts[generation] > self.thresholds[generation]:
                return gc.collect(generation)
        return 0


def collect_garbage_in_gui_thread(app: QCoreApplication) -> GuiThreadGarbageCollector:
    """Install the collector on ``app`` once; later calls return the one installed."""
    if QThread.currentThread() is not app.thread():
        raise RuntimeError("the garbage collector must be installed from the GUI thread")
    existing = app.findChild(GuiThreadGarbageCollector)
    if existing is not None:
        return existing
    return GuiThreadGarbageCollector(app)
