"""A CSV file of numeric feature columns, with an optional label column.

Read with the standard ``csv`` module rather than ``numpy.loadtxt``/``genfromtxt``: a bad cell
must be reported by its row and column name, where ``genfromtxt`` silently turns it into NaN and
``loadtxt`` names neither. The first row is a header when any of its cells is not a number.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from studio.core.data.samples import Samples, as_labels
from studio.core.errors import StudioError


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _rows(path: Path) -> list[list[str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as stream:
            return [row for row in csv.reader(stream) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise StudioError(f"{path}: not a readable CSV file ({error})") from None


def _labels(column: list[str], path: Path, name: str,
            classes: tuple[str, ...] | None) -> tuple[torch.Tensor, tuple[str, ...] | None]:
    """Integer ids as they are; text names become ids in sorted order (or ``classes``')."""
    if all(_is_number(cell) for cell in column) and classes is None:
        return as_labels(np.array([float(cell) for cell in column]), f"{path}: {name}"), None
    names = classes or tuple(sorted(set(column)))
    unknown = sorted(set(column) - set(names))
    if unknown:
        raise StudioError(f"{path}: column {name!r} holds labels {unknown[:5]} that the "
                          f"training file does not")
    return torch.tensor([names.index(cell) for cell in column], dtype=torch.int64), names


def read_csv(path: Path, label_column: str | None,
             classes: tuple[str, ...] | None = None) -> Samples:
    """Features as float32 (one row per sample) and, with ``label_column``, the labels."""
    if not path.is_file():
        raise StudioError(f"{path}: no such file")
    rows = _rows(path)
    if not rows:
        raise StudioError(f"{path}: the CSV file is empty")
    header_given = not all(_is_number(cell) for cell in rows[0])
    header = [cell.strip() for cell in rows[0]] if header_given else [
        str(i) for i in range(len(rows[0]))]
    body = rows[1:] if header_given else rows
    first_line = 2 if header_given else 1
    if label_column is not None and label_column not in header:
        raise StudioError(f"{path}: no column named {label_column!r} for the labels; the "
                          f"columns are {', '.join(header)}" + (
                              "" if header_given else " (the file has no header row)"))
    for number, row in enumerate(body, first_line):
        if len(row) != len(header):
            raise StudioError(f"{path}: row {number} has {len(row)} cells where the header has "
                              f"{len(header)}")
    label_at = header.index(label_column) if label_column is not None else None
    features = [i for i in range(len(header)) if i != label_at]
    if not features:
        raise StudioError(f"{path}: no feature columns besides the label column")
    values = np.empty((len(body), len(features)), dtype=np.float32)
    for number, row in enumerate(body, first_line):
        for j, column in enumerate(features):
            try:
                values[number - first_line, j] = float(row[column])
            except ValueError:
                raise StudioError(f"{path}: row {number}, column {header[column]!r}: "
                                  f"{row[column]!r} is not a number") from None
    labels, names = (None, None) if label_at is None else _labels(
        [row[label_at].strip() for row in body], path, header[label_at], classes)
    return Samples(torch.from_numpy(values), labels, f"data rows of {path.name}", names)
