"""What the window shows before a model is open: the ways in, and the recent files."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QListWidget, QPushButton, QVBoxLayout, QWidget


class WelcomePage(QWidget):
    openRequested = Signal()
    demoRequested = Signal()
    recentRequested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setAlignment(Qt.AlignmentFlag.AlignCenter)
        title = QLabel("<h1>Compression Studio</h1>")
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(title)
        blurb = QLabel("Open a PyTorch or ONNX model — or drop it on this window — to see its "
                       "layers and plan pruning, quantization and distillation.")
        blurb.setWordWrap(True)
        blurb.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(blurb)
        open_button = QPushButton("Open Model or Project…")
        open_button.clicked.connect(self.openRequested)
        demo_button = QPushButton("Open the Demo (digit CNN)")
        demo_button.clicked.connect(self.demoRequested)
        for button in (open_button, demo_button):
            button.setMinimumWidth(280)
            layout.addWidget(button, 0, Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(QLabel("Recent"), 0, Qt.AlignmentFlag.AlignCenter)
        self.recent = QListWidget()
        self.recent.setMaximumWidth(520)
        self.recent.setMaximumHeight(180)
        self.recent.itemActivated.connect(lambda item: self.recentRequested.emit(item.text()))
        layout.addWidget(self.recent, 0, Qt.AlignmentFlag.AlignCenter)

    def set_recent(self, paths: list[str]) -> None:
        self.recent.clear()
        self.recent.addItems(paths)
