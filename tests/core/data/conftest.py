"""Small data files written in each test's tmp_path: the sources read real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_png(path: Path, value: int, size: tuple[int, int] = (28, 28)) -> Path:
    """A greyscale PNG of ``size`` (width, height): a bright square on a dark field whose
    brightness is ``value``, so classes differ and every pixel is known."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0]), dtype=np.uint8)
    pixels[4:-4, 4:-4] = value
    Image.fromarray(pixels, mode="L").save(path)
    return path


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """images/zero/*.png (6 dark) and images/one/*.png (6 bright): two classes, 12 images."""
    root = tmp_path / "images"
    for index in range(6):
        write_png(root / "zero" / f"{index:02}.png", 10 + index)
        write_png(root / "one" / f"{index:02}.png", 200 + index)
    return root


def write_module(folder: Path, name: str, source: str,
                 monkeypatch: pytest.MonkeyPatch) -> str:
    """A tiny importable module ``name`` in ``folder``, put on sys.path for this test only."""
    (folder / f"{name}.py").write_text(source, encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    return name
