"""The example input that traces a model's shapes: where it comes from and how it is checked."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from studio.core.errors import InputError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


@dataclass(frozen=True)
class InputSpec:
    """Shape and dtype of one example input (batch dimension included)."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.shape or any(not isinstance(d, int) or d < 1 for d in self.shape):
            raise InputError(
                f"input shape {list(self.shape)}: give one or more positive integers, "
                "batch first, e.g. 1,3,224,224"
            )
        if self.dtype not in DTYPES:
            raise InputError(f"input dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")

    def __str__(self) -> str:
        text = ",".join(str(d) for d in self.shape)
        return text if self.dtype == "float32" else f"{text}:{self.dtype}"

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        """Read ``1,1,28,28`` or ``1x128:int64`` as typed by a user."""
        shape_text, _, dtype = text.strip().partition(":")
        parts = [p for p in shape_text.replace("x", ",").replace(" ", ",").split(",") if p]
        try:
            shape = tuple(int(p) for p in parts)
        except ValueError:
            raise InputError(
                f"input shape {text!r}: use comma-separated integers, batch first, "
                "e.g. 1,3,224,224 (add :int64 for token ids)"
            ) from None
        return cls(shape, dtype.strip() or "float32")

    def make_tensor(self) -> torch.Tensor:
        """A deterministic tensor of this spec: unit noise for floats, zeros for indices."""
        dtype = DTYPES[self.dtype]
        if dtype.is_floating_point:
            generator = torch.Generator().manual_seed(0)
            return torch.randn(self.shape, generator=generator).to(dtype)
        return torch.zeros(self.shape, dtype=dtype)
