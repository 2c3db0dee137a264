"""PNG and CSV export shared by the plots (SVG is left out: pyqtgraph 0.14's SVGExporter fails
under PySide6 6.12, pyqtgraph#3485)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyqtgraph as pg
from pyqtgraph.exporters import ImageExporter
from PySide6.QtWidgets import QWidget


def export_png(item: pg.GraphicsItem, fallback: QWidget, path: str | Path,
               width: int = 1200) -> Path:
    """Render ``item`` (a PlotItem or layout) to a PNG at ``width`` pixels.

    A widget that has never been shown has no scene size to render, so it falls back to
    grabbing ``fallback`` at its current size rather than writing an empty file.
    """
    path = Path(path)
    rect = item.sceneBoundingRect()
    if rect.width() >= 2 and rect.height() >= 2:
        exporter = ImageExporter(item)
        exporter.parameters()["width"] = width
        exporter.export(str(path))
        if path.exists() and path.stat().st_size:
            return path
    if not fallback.grab().save(str(path), "PNG"):
        raise OSError(f"could not write {path}")
    return path


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    """Write ``rows`` under ``header``, UTF-8 with no blank lines on Windows."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def style_plot(plot_item: pg.PlotItem) -> None:
    """Readable on a white background: dark axis text, no "(x0.001)" SI rescaling (the labels
    already name the unit), and room around the data so edge markers are not clipped."""
    for name in ("left", "bottom"):
        axis = plot_item.getAxis(name)
        axis.setPen(pg.mkPen(90, 90, 90))
        axis.setTextPen(pg.mkPen(30, 30, 30))
        axis.enableAutoSIPrefix(False)
    plot_item.getViewBox().setDefaultPadding(0.06)
