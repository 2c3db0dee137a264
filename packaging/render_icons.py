"""Render the SVG app icon to PNG, because PyInstaller and some desktops cannot read SVG.

PyInstaller turns a PNG into the ``.ico`` (Windows) or ``.icns`` (macOS) it needs when Pillow is
installed; Linux desktops take the SVG directly, or PNGs in the hicolor theme sizes.

    QT_QPA_PLATFORM=offscreen python packaging/render_icons.py [--sizes 16 32 48 64 128 256]

writes ``resources/icons/compression-studio.png`` (256 px) and, for other sizes,
``compression-studio-<size>.png`` beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ICONS = Path(__file__).resolve().parent.parent / "resources" / "icons"
SVG = ICONS / "compression-studio.svg"


def render(svg: Path, size: int, target: Path) -> None:
    """Draw ``svg`` into a transparent ``size``x``size`` PNG at ``target``."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"{svg}: not a valid SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    if not image.save(str(target)):
        raise SystemExit(f"could not write {target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    for size in args.sizes:
        name = "compression-studio.png" if size == 256 else f"compression-studio-{size}.png"
        render(SVG, size, ICONS / name)
        print(ICONS / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
