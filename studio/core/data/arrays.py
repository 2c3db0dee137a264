"""Arrays saved by numpy: a .npz with inputs and optional labels, or a .npy of inputs.

Opened with ``allow_pickle=False``: an object array would be unpickled, which runs code, and
opening data must never do that. 8-bit arrays are taken for image pixels: scaled to 0..1 and
normalised like an image folder, with a channel axis added to N x H x W greyscale stacks.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from studio.core.data.images import normalise
from studio.core.data.samples import Samples, as_inputs, as_labels
from studio.core.errors import StudioError
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


def _load(path: Path) -> dict[str, np.ndarray] | np.ndarray:
    # np.load takes any other content for a pickle; say what the file is not, instead.
    with path.open("rb") as stream:
        magic = stream.read(6)
    if not (magic.startswith(b"PK\x03\x04") or magic == b"\x93NUMPY"):
        raise StudioError(f"{path}: not a readable numpy file (neither .npz nor .npy content)")
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise StudioError(f"{path}: holds Python objects (an object array); reading it "
                              "would run code, so it is refused. Save plain numeric arrays"
                              ) from None
        raise StudioError(f"{path}: not a readable numpy file ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise StudioError(f"{path}: not a readable numpy file ({error})") from None


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
    loaded = _load(path)
    if isinstance(loaded, np.ndarray):
        if isinstance(inputs_key, list):
            raise StudioError(f"{path}: a .npy holds one array; several named inputs "
                              f"({', '.join(inputs_key)}) need a .npz with one array each")
        inputs = _as_model_inputs(loaded, options, f"{path}")
        return Samples(inputs, None, f"rows of {path.name}")
    keys = list(loaded)
    if isinstance(inputs_key, list):
        chosen = [_pick(keys, key, INPUT_KEYS, "inputs", path) for key in inputs_key]
    else:
        chosen = [_pick(keys, inputs_key, INPUT_KEYS, "inputs", path)]
        if chosen[0] is None:
            raise StudioError(f"{path}: no inputs array found (looked for "
                              f"{', '.join(INPUT_KEYS)}); it holds {', '.join(keys)}: name "
                              "one with inputs_key")
    label_name = _pick(keys, labels_key, LABEL_KEYS, "labels", path)
    several = isinstance(inputs_key, list)
    named = {key: _as_model_inputs(loaded[key], options, f"{path} ({key!r})" if several
                                   else f"{path}")
             for key in chosen if key is not None}
    first = next(iter(named))
    labels = None if label_name is None else as_labels(loaded[label_name], f"{path}")
    return Samples(named[first], labels, f"rows of {first!r} in {path.name}",
                   named=named if several else {})
