"""A non-modal notice bar: errors and hints that never block the window."""

from __future__ import annotations

from PySide6.QtCore import QTimer
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
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.hide)
        self.hide()

    def show_notice(self, kind: str, message: str) -> None:
        """``kind`` is "error" (stays until dismissed) or "info" (hides itself after 10 s)."""
        self.kind = kind
        self.setStyleSheet(f"NoticeBar {{ {_STYLES[kind]} border-radius: 4px; }}")
        self.text.setText(message)
        self.show()
        if kind == "info":
            self._timer.start(10_000)
        else:
            self._timer.stop()
