"""A non-modal notice bar: errors and hints that never block the window.

It floats over the bottom edge of its host (:meth:`NoticeBar.float_over`) instead of taking a
place in a layout, so the tree and panels do not jump down and back up as notices come and go.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QToolButton, QWidget

_STYLES = {
    "error": "background: #fdecea; border: 1px solid #f5c2c0; color: #611a15;",
    "info": "background: #e8f4fd; border: 1px solid #b6dcf7; color: #0c3c60;",
}


class NoticeBar(QFrame):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 4, 4)
        self.text = QLabel()
        self.text.setWordWrap(True)
        layout.addWidget(self.text, 1)
        close = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.setToolTip("Dismiss")
        close.clicked.connect(self.hide)
        layout.addWidget(close)
        self.kind = ""
        self._margin = 0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.hide)
        self.hide()

    def float_over(self, host: QWidget, margin: int = 8) -> None:
        """Float at the bottom of ``host`` (its child), following its size."""
        self.setParent(host)
        self._margin = margin
        host.installEventFilter(self)
        self._place()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.parent() and event.type() == QEvent.Type.Resize:
            self._place()
        return False

    def _place(self) -> None:
        host = self.parentWidget()
        if host is None:
            return
        width = host.width() - 2 * self._margin
        height = self.heightForWidth(width) if self.hasHeightForWidth() else \
            self.sizeHint().height()
        self.setGeometry(self._margin, host.height() - height - self._margin, width, height)
        self.raise_()

    def show_notice(self, kind: str, message: str) -> None:
        """``kind`` is "error" (stays until dismissed) or "info" (hides itself after 10 s)."""
        self.kind = kind
        self.setStyleSheet(f"NoticeBar {{ {_STYLES[kind]} border-radius: 4px; }}")
        self.text.setText(message)
        self.show()
        self._place()
        if kind == "info":
            self._timer.start(10_000)
        else:
            self._timer.stop()
