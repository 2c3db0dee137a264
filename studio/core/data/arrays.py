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


def read_arrays(path: Path, inputs_key: str | None, labels_key: str | None,
                options: ImageOptions) -> Samples:
    """Inputs (and labels, when the .npz has them) from ``path``."""
    if path.suffix.lower() not in (".npz", ".npy"):
        raise StudioError(f"{path}: the arrays source reads .npz or .npy files")
    if not path.is_file():
        raise StudioError(f"{path}: no such file")
    loaded = _load(path)
    if isinstance(loaded, np.ndarray):
        inputs_array, labels_array, origin = loaded, None, f"rows of {path.name}"
    else:
        keys = list(loaded)
        chosen = _pick(keys, inputs_key, INPUT_KEYS, "inputs", path)
        if chosen is None:
            raise StudioError(f"{path}: no inputs array found (looked for "
                              f"{', '.join(INPUT_KEYS)}); it holds {', '.join(keys)}: name "
                              "one with inputs_key")
        label_name = _pick(keys, labels_key, LABEL_KEYS, "labels", path)
        inputs_array = loaded[chosen]
        labels_array = loaded[label_name] if label_name else None
        origin = f"rows of {chosen!r} in {path.name}"
    where = f"{path}"
    if inputs_array.dtype.kind not in "biuf":
        raise StudioError(f"{where}: inputs of type {inputs_array.dtype} are not numbers")
    if inputs_array.ndim == 0:
        raise StudioError(f"{where}: the inputs are a single number, not samples")
    inputs = _pixels(inputs_array, options, where) if inputs_array.dtype == np.uint8 \
        else as_inputs(inputs_array, where)
    labels = None if labels_array is None else as_labels(labels_array, where)
    return Samples(inputs, labels, origin)
