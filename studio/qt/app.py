"""Start the studio: one QApplication, the main window, and an optional model to open."""

from __future__ import annotations

import os
import sys

from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from studio import __version__
from studio.core.errors import StudioError
from studio.core.models.inputs import InputSpec
from studio.core.resources import resource_path
from studio.qt.gui_thread_gc import collect_garbage_in_gui_thread


def _has_display() -> bool:
    if sys.platform != "linux" or os.environ.get("QT_QPA_PLATFORM"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def application() -> QApplication:
    app = QApplication.instance()
    if app is None:
        app = QApplication(sys.argv[:1])
    collect_garbage_in_gui_thread(app)
    app.setOrganizationName("CompressionStudio")
    app.setApplicationName("Compression Studio")
    app.setApplicationVersion(__version__)
    app.setDesktopFileName("compression-studio")  # Wayland matches the .desktop file by it
    icon = resource_path("icons", "compression-studio.svg")
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))
    return app  # type: ignore[return-value]


def run_gui(target: str | None = None, architecture: str | None = None,
            input_shape: str | None = None) -> int:
    if not _has_display():
        print("compression-studio: error: no display to open the window on; run it in a desktop "
              "session, or set QT_QPA_PLATFORM=offscreen for headless use", file=sys.stderr)
        return 2
    example = InputSpec.parse(input_shape) if input_shape else None  # raises StudioError early
    app = application()
    from studio.qt.main_window import MainWindow

    window = MainWindow()
    window.show()
    if target:
        window.project.open_path(target, architecture, example=example)
    return app.exec()


def main() -> int:
    """Entry point of the ``compression-studio-gui`` launcher: ``[MODEL_OR_PROJECT]``, or
    ``--self-check OUT [PATH ...]`` (:mod:`studio.qt.self_check`)."""
    if sys.argv[1:2] == ["--self-check"]:
        from studio.qt.self_check import main as self_check

        return self_check(sys.argv[2:])
    try:
        return run_gui(sys.argv[1] if len(sys.argv) > 1 else None)
    except StudioError as error:
        print(f"compression-studio: error: {error}", file=sys.stderr)
        return 2
