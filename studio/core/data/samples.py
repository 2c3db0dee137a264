"""What every source reads before it is split: inputs, optional labels, and the checks they all
need (at least one sample, finite numbers, integer labels that fit)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from studio.core.errors import StudioError


@dataclass(frozen=True)
class Samples:
    inputs: Tensor
    labels: Tensor | None
    origin: str
    """What a sample number counts, for splits.json: ``rows of data.npz``, ``images of ...``."""
    classes: tuple[str, ...] | None = None
    """Class names when labels came from names (image sub-folders, a CSV text column)."""
    named: dict[str, Tensor] = field(default_factory=dict)
    """Every input by name, row for row, when the source gives several (``inputs`` is the
    first of them); empty for one unnamed input tensor."""

    def __len__(self) -> int:
        return len(self.inputs)


def as_inputs(values: np.ndarray | Tensor, where: str) -> Tensor:
    """Inputs as a tensor the model can take: floats become float32, integers (token ids)
    int64; anything else (strings, objects, complex) is refused."""
    tensor = torch.as_tensor(np.asarray(values)) if not isinstance(values, Tensor) else values
    if tensor.dtype == torch.bool:
        tensor = tensor.float()
    if tensor.is_floating_point():
        return tensor.float()
    if tensor.is_complex():
        raise StudioError(f"{where}: complex numbers are not model inputs")
    return tensor.long()


def as_labels(values: np.ndarray | Tensor, where: str) -> Tensor:
    """Labels as int64 class ids; non-integer values are refused (regression targets are not
    labels: leave them out and the metric becomes agreement with the uncompressed model)."""
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.equal(np.round(array), array).all():
            raise StudioError(f"{where}: labels must be integer class ids (0, 1, ...); for "
                              "regression targets set labelled: false and the metric becomes "
                              "agreement with the uncompressed model")
    elif array.dtype.kind not in "iub":
        raise StudioError(f"{where}: labels must be integer class ids, not {array.dtype}")
    labels = torch.from_numpy(array.astype(np.int64))
    if labels.numel() and int(labels.min()) < 0:
        raise StudioError(f"{where}: label {int(labels.min())} is negative; class ids start at 0")
    return labels


def check_samples(samples: Samples, where: str) -> None:
    """At least one sample, labels one per sample, and no NaN or Inf anywhere."""
    if len(samples) == 0:
        raise StudioError(f"{where}: holds no samples")
    if samples.labels is not None and len(samples.labels) != len(samples.inputs):
        raise StudioError(f"{where}: {len(samples.inputs)} inputs but {len(samples.labels)} "
                          "labels; give one label per sample")
    for name, inputs in (samples.named or {"": samples.inputs}).items():
        which = f"{where} ({name!r})" if name else where
        if len(inputs) != len(samples.inputs):
            raise StudioError(f"{which}: {len(inputs)} rows where the first input has "
                              f"{len(samples.inputs)}; every input needs one row per sample")
        if inputs.is_floating_point():
            finite = torch.isfinite(inputs.reshape(len(inputs), -1)).all(1)
            if not bool(finite.all()):
                bad = (~finite).nonzero().flatten()
                raise StudioError(f"{which}: {len(bad)} sample(s) hold NaN or Inf (the first "
                                  f"is sample {int(bad[0])}); clean or drop them")
