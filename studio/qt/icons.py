"""Icons the style does not give: undo and redo as curved arrows (the standard pixmaps offer
only back/forward arrows, which read as navigation). The desktop theme's icons are used where
the platform has a theme; these drawn ones otherwise (offscreen, Windows, a bare X server)."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap, QTransform

SIZE = 32


def _curved_arrow(mirror: bool) -> QIcon:
    """An arrow curving back over its own path (undo); ``mirror`` turns it into redo."""
    pixmap = QPixmap(SIZE, SIZE)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    if mirror:
        painter.setTransform(QTransform(-1, 0, 0, 1, SIZE, 0))
    colour = QColor(40, 90, 160)
    painter.setPen(QPen(colour, 3.2, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
    path = QPainterPath()
    path.arcMoveTo(QRectF(6, 6, 22, 20), 150)
    path.arcTo(QRectF(6, 6, 22, 20), 150, -200)  # over the top and down the right side
    painter.drawPath(path)
    head = QPainterPath(QPointF(3, 17))  # the arrow's head at the arc's start, pointing back
    head.lineTo(3.5, 6.5)
    head.lineTo(13, 12)
    head.closeSubpath()
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(colour)
    painter.drawPath(head)
    painter.end()
    return QIcon(pixmap)


def undo_icon() -> QIcon:
    themed = QIcon.fromTheme(QIcon.ThemeIcon.EditUndo)
    return themed if not themed.isNull() else _curved_arrow(mirror=False)


def redo_icon() -> QIcon:
    themed = QIcon.fromTheme(QIcon.ThemeIcon.EditRedo)
    return themed if not themed.isNull() else _curved_arrow(mirror=True)
