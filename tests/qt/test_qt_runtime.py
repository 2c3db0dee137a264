"""The Qt binding itself: a long session must not wear down Python's reference to None.

PySide6 6.12.0 dropped one reference to ``None`` on every ``processEvents()`` and ``setText()``;
before Python 3.12 ``None`` is not immortal, so a window that updated labels for a while aborted
with "deallocating None". ``constraints.txt`` pins a release without the bug; this keeps it so.
"""

from __future__ import annotations

import sys

from PySide6.QtWidgets import QApplication, QLabel


def test_event_processing_and_label_updates_keep_none_alive(qapp: QApplication) -> None:
    label = QLabel()
    before = sys.getrefcount(None)
    for index in range(2000):
        qapp.processEvents()
        label.setText(str(index))
    assert sys.getrefcount(None) >= before - 100
