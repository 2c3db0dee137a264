"""An image folder: one sub-folder per class (classes are the sorted folder names), or a flat
folder of unlabelled images. Read with Pillow, resized, converted to greyscale or RGB, scaled to
0..1 and normalised as ``(x - mean) / std``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from studio.core.data.samples import Samples
from studio.core.errors import StudioError
from studio.core.plan.stages import ImageOptions

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def normalise(pixels: Tensor, options: ImageOptions, where: str) -> Tensor:
    """``(pixels - mean) / std`` per channel (N x C x ...); one value means every channel."""
    channels = pixels.shape[1] if pixels.dim() >= 2 else 1
    stats = []
    for name, values in (("mean", options.mean), ("std", options.std)):
        if len(values) not in (1, channels):
            raise StudioError(f"{where}: image.{name} has {len(values)} values for {channels} "
                              "channel(s); give one value or one per channel")
        stats.append(torch.tensor(values, dtype=torch.float32).view(
            1, -1, *([1] * max(0, pixels.dim() - 2))))
    mean, std = stats
    if bool((std == 0).any()):
        raise StudioError(f"{where}: image.std must not be 0")
    return (pixels - mean) / std


def _read(path: Path, options: ImageOptions) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert("L" if options.channels == 1 else "RGB")
            if options.size is not None:
                height, width = options.size
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise StudioError(f"{path}: not a readable image ({error}); remove or replace it"
                          ) from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def read_image_folder(folder: Path, options: ImageOptions,
                      classes: tuple[str, ...] | None = None) -> Samples:
    """Every image under ``folder`` as one N x C x H x W tensor. ``classes`` (from the training
    folder) fixes the label of each class name when reading a separate test folder."""
    if not folder.is_dir():
        raise StudioError(f"{folder}: no such folder (the images source reads a folder)")
    sub_folders = _class_folders(folder)
    files: list[Path] = []
    labels: list[int] | None = None
    found: tuple[str, ...] | None = None
    if sub_folders:
        loose = _images_in(folder)
        if loose:
            raise StudioError(f"{folder}: holds both class sub-folders and loose images (such "
                              f"as {loose[0].name}); put every image in its class's folder")
        found = tuple(p.name for p in sub_folders)
        names = classes or found
        unknown = [name for name in found if name not in names]
        if unknown:
            raise StudioError(f"{folder}: class folder(s) {', '.join(unknown)} are not among "
                              f"the training classes {', '.join(names)}")
        labels = []
        for sub in sub_folders:
            inside = _images_in(sub)
            if not inside:
                raise StudioError(f"{sub}: the class folder holds no images")
            files += inside
            labels += [names.index(sub.name)] * len(inside)
    else:
        files = _images_in(folder)
    if not files:
        raise StudioError(f"{folder}: holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    arrays = [_read(path, options) for path in files]
    first = arrays[0].shape
    for path, array in zip(files, arrays, strict=True):
        if array.shape != first:
            raise StudioError(f"{path}: is {array.shape[2]}x{array.shape[1]} where "
                              f"{files[0].name} is {first[2]}x{first[1]}; set image.size "
                              "to resize every image to one size")
    pixels = torch.from_numpy(np.stack(arrays))
    origin = f"images under {folder.name}/ in sorted path order"
    return Samples(normalise(pixels, options, str(folder)),
                   None if labels is None else torch.tensor(labels, dtype=torch.int64),
                   origin, classes or found)
