"""Small data files written in each test's tmp_path: the sources read real files."""

from __future__ import annotations

import zipfile
import zlib
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


GB = 10**9


def _deflated_zeros(header: bytes, count: int) -> bytes:
    """A raw deflate stream of ``header`` then ``count`` zero bytes, built from one compressed
    chunk repeated (a full flush resets the compressor, so each chunk compresses the same),
    so gigabytes cost a few megabytes and no time."""
    chunk_size = 1 << 24
    assert count % chunk_size == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    chunk = compressor.compress(bytes(chunk_size)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return start + chunk * (count // chunk_size) + compressor.flush()


def npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    magic = np.lib.format.magic(1, 0)
    body = repr(header).encode() + b" "
    body += b" " * (-(len(magic) + 2 + len(body) + 1) % 64) + b"\n"
    return magic + len(body).to_bytes(2, "little") + body


def write_bomb(path: Path, arrays_: dict[str, np.ndarray], bomb: str, declared: int) -> Path:
    """An .npz holding ``arrays_`` plus member ``bomb``: ``declared`` zero bytes deflated (the
    CRC is not computed: nothing may read it)."""
    header = npy_header((declared,), "u1")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays_.items():
            with archive.open(f"{name}.npy", "w") as stream:
                np.lib.format.write_array(stream, array)
        info = zipfile.ZipInfo(f"{bomb}.npy")
        with archive.open(info, "w", force_zip64=True) as stream:  # stored: our deflate bytes
            stream.write(_deflated_zeros(header, declared))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size = len(header) + declared
        end = archive.fp.tell()
        archive.fp.seek(info.header_offset)
        archive.fp.write(info.FileHeader(True))
        archive.fp.seek(end)
    return path
