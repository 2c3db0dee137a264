"""Arrays saved by numpy: a .npz with inputs and optional labels, or a .npy of inputs.

Opened with ``allow_pickle=False``: an object array would be unpickled, which runs code, and
opening data must never do that. A .npz is a zip, so a few megabytes can inflate to gigabytes:
only the arrays used are read, and only once their declared sizes (zip header, then the npy
header's shape × item size) are checked against the file and a memory limit. 8-bit arrays are
taken for image pixels: scaled to 0..1 and normalised like an image folder, with a channel axis
added to N x H x W greyscale stacks.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import IO

import numpy as np
import torch

from studio.core.data.images import normalise
from studio.core.data.samples import Samples, as_inputs, as_labels
from studio.core.errors import StudioError
from studio.core.limits import memory_budget
from studio.core.plan.stages import ImageOptions

INPUT_KEYS = ("x", "inputs", "images", "input_ids", "data")
LABEL_KEYS = ("y", "labels", "targets")


def _pick(keys: list[str], wanted: str | None, defaults: tuple[str, ...], what: str,
          path: Path) -> str | None:
    if wanted is not None:
        if wanted not in keys:
            raise StudioError(f"{path}: no array named {wanted!r} for the {what}; it holds "
                              f"{', '.join(keys) or 'no arrays'}")
        return wanted
    return next((key for key in defaults if key in keys), None)


def array_budget() -> int:
    """The most the arrays read from one file may take in memory (half of it: the model and
    the splits' copies need the rest). A small deflated file can declare gigabytes, and that
    must be refused from its headers, before anything is inflated."""
    return memory_budget() // 2


BOMB_RATIO = 200
BOMB_MIN_BYTES = 256 << 20
"""A member inflating past both is taken for a bomb: real arrays rarely compress 200×, and
small ones may (all-zero padding) without harm."""


def _size(count: int) -> str:
    if count < 10**5:
        return f"{count:,} bytes"
    return f"{count / 1e9:.1f} GB" if count >= 10**8 else f"{count / 1e6:.1f} MB"


def _checked_header(stream: IO[bytes], stored: int, where: str) -> int:
    """Read a .npy header from ``stream`` and give the bytes it declares, which must be plain
    numbers and fit in the ``stored`` bytes that follow the header's start."""
    start = stream.read(6)
    if start[:1] == b"\x80":  # np.load would unpickle it (with allow_pickle) or return bytes
        raise StudioError(f"{where}: a Python pickle, not a numpy array; reading it could run "
                          "code, so it is refused. Save plain numeric arrays (numpy.savez)")
    if start != b"\x93NUMPY":
        raise StudioError(f"{where}: not a numpy array; save plain numeric arrays "
                          "(numpy.savez)")
    version = tuple(stream.read(2))
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) \
        else np.lib.format.read_array_header_2_0
    try:
        shape, _, dtype = reader(stream)
    except ValueError as error:
        raise StudioError(f"{where}: a damaged numpy header ({error})") from None
    if dtype.hasobject:
        raise StudioError(f"{where}: holds Python objects (an object array); reading it would "
                          "run code, so it is refused. Save plain numeric arrays")
    declared = math.prod(shape) * dtype.itemsize
    held = stored - stream.tell()
    if declared > held:
        raise StudioError(f"{where}: declares shape {list(shape)} of {dtype} ({_size(declared)})"
                          f" but holds {_size(held)}; the file is damaged or crafted")
    return declared


def _refuse_if_too_big(total: int, path: Path) -> None:
    budget = array_budget()
    if total > budget:
        raise StudioError(f"{path}: the arrays it would read take {_size(total)} in memory, "
                          f"more than the {_size(budget)} the studio allows (half of "
                          "this machine's memory); use fewer samples")


def _read_npy(path: Path) -> np.ndarray:
    with path.open("rb") as stream:
        _refuse_if_too_big(_checked_header(stream, path.stat().st_size, str(path)), path)
    return np.load(path, allow_pickle=False)


def _read_members(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo],
                  names: list[str], path: Path) -> list[np.ndarray]:
    """Only the members named: each one's zip and npy headers are checked (against the file's
    size and the memory limit) before any of them is inflated."""
    file_size = path.stat().st_size
    total = 0
    for name in names:
        info = members[name]
        where = f"{path}: array {name!r}"
        if info.compress_size > file_size:
            raise StudioError(f"{where}: declares {_size(info.compress_size)} stored in a file "
                              f"of {_size(file_size)}; the file is damaged or crafted")
        with archive.open(info) as stream:
            declared = _checked_header(stream, info.file_size, where)
        if declared > BOMB_MIN_BYTES and declared > BOMB_RATIO * info.compress_size:
            raise StudioError(f"{where}: inflates {declared / info.compress_size:.0f}× "
                              f"({_size(info.compress_size)} stored → {_size(declared)}); "
                              "refused as a decompression bomb. Save real data uncompressed "
                              "(numpy.savez)")
        total += declared
    _refuse_if_too_big(total, path)
    arrays = []
    for name in names:
        with archive.open(members[name]) as stream:
            arrays.append(np.lib.format.read_array(stream, allow_pickle=False))
    return arrays


def _pixels(values: np.ndarray, options: ImageOptions, where: str) -> torch.Tensor:
    tensor = torch.from_numpy(values.astype(np.float32) / 255.0)
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(1)
    return normalise(tensor, options, where)


def _as_model_inputs(values: np.ndarray, options: ImageOptions, where: str) -> torch.Tensor:
    if values.dtype.kind not in "biuf":
        raise StudioError(f"{where}: inputs of type {values.dtype} are not numbers")
    if values.ndim == 0:
        raise StudioError(f"{where}: the inputs are a single number, not samples")
    return _pixels(values, options, where) if values.dtype == np.uint8 \
        else as_inputs(values, where)


def read_arrays(path: Path, inputs_key: str | list[str] | None, labels_key: str | None,
                options: ImageOptions) -> Samples:
    """Inputs (and labels, when the .npz has them) from ``path``; ``inputs_key`` as a list
    reads several named inputs (see :attr:`Samples.named`)."""
    if path.suffix.lower() not in (".npz", ".npy"):
        raise StudioError(f"{path}: the arrays source reads .npz or .npy files")
    if not path.is_file():
        raise StudioError(f"{path}: no such file")
    with path.open("rb") as stream:
        magic = stream.read(6)
    # np.load would take any other content for a pickle; say what the file is not, instead.
    if not (magic.startswith(b"PK\x03\x04") or magic == b"\x93NUMPY"):
        raise StudioError(f"{path}: not a readable numpy file (neither .npz nor .npy content)")
    several = isinstance(inputs_key, list)
    try:
        if path.suffix.lower() == ".npy":
            if several:
                raise StudioError(f"{path}: a .npy holds one array; several named inputs "
                                  f"({', '.join(inputs_key)}) need a .npz with one array each")
            inputs = _as_model_inputs(_read_npy(path), options, f"{path}")
            return Samples(inputs, None, f"rows of {path.name}")
        with zipfile.ZipFile(path) as archive:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            keys = list(members)
            if isinstance(inputs_key, list):
                chosen = [_pick(keys, key, INPUT_KEYS, "inputs", path) for key in inputs_key]
            else:
                chosen = [_pick(keys, inputs_key, INPUT_KEYS, "inputs", path)]
                if chosen[0] is None:
                    raise StudioError(f"{path}: no inputs array found (looked for "
                                      f"{', '.join(INPUT_KEYS)}); it holds {', '.join(keys)}: "
                                      "name one with inputs_key")
            label_name = _pick(keys, labels_key, LABEL_KEYS, "labels", path)
            names = list(dict.fromkeys([key for key in chosen if key is not None]
                                       + ([label_name] if label_name else [])))
            loaded = dict(zip(names, _read_members(archive, members, names, path), strict=True))
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as error:
        raise StudioError(f"{path}: not a readable numpy file ({error})") from None
    named = {key: _as_model_inputs(loaded[key], options, f"{path} ({key!r})" if several
                                   else f"{path}")
             for key in chosen if key is not None}
    first = next(iter(named))
    labels = None if label_name is None else as_labels(loaded[label_name], f"{path}")
    return Samples(named[first], labels, f"rows of {first!r} in {path.name}",
                   named=named if several else {})
