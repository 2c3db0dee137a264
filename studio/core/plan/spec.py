"""One layer's compression settings, as set by the user (unset fields are inherited)."""

from __future__ import annotations

import re
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

WeightBits = Literal["fp32", "fp16", "bf16", "int8", "int4", "int2"]
ActBits = Literal["fp32", "fp16", "bf16", "int16", "int8"]
WEIGHT_BITS: tuple[str, ...] = get_args(WeightBits)
ACT_BITS: tuple[str, ...] = get_args(ActBits)
AdapterKind = Literal["lora", "dora", "none"]
ADAPTER_KINDS: tuple[str, ...] = get_args(AdapterKind)
BITS_PER_ELEMENT = {"fp32": 32, "fp16": 16, "bf16": 16, "int16": 16, "int8": 8, "int4": 4,
                    "int2": 2}
GRANULARITIES = ("unstructured", "channels", "2:4", "4:8", "1:4")
"""Offered in the GUI; any N:M (N nonzero weights in every M, 0 < N < M <= 32) is accepted."""
MAX_SPARSITY = 0.99
SAME_LAYER = "same"
"""``distill_from`` value: match the teacher's layer that has this layer's name."""
NO_MATCH = "none"
"""``distill_from`` value: no feature match here (stops an inherited ``same``)."""
_NM = re.compile(r"^(\d+):(\d+)$")


def parse_nm(granularity: str) -> tuple[int, int] | None:
    """(N, M) for an N:M granularity, None for the others."""
    match = _NM.match(granularity)
    return (int(match[1]), int(match[2])) if match else None


class LayerSpec(BaseModel):
    """What the user set on one node; ``None`` means "inherit from the parent"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sparsity: float | None = Field(default=None, ge=0.0, le=MAX_SPARSITY,
                                   description="fraction of weights to remove, 0 to 0.99")
    granularity: str | None = Field(default=None,
                                    description="unstructured, channels, or N:M such as 2:4")
    weight_bits: WeightBits | None = None
    act_bits: ActBits | None = None
    exclude: bool | None = Field(default=None, description="leave this subtree uncompressed")
    group_size: int | None = Field(
        default=None, ge=16, le=4096,
        description="weights along the input sharing one scale in int4/int2 (and int8 "
        "weight-only) MatMul layers: a power of two, 16 or more (32 by default; 128 is "
        "GPTQ's usual choice)")
    adapter: AdapterKind | None = Field(
        default=None, description="with an adapters section: lora, dora (LoRA with a learned "
        "magnitude per output) or none (no adapter on this subtree's Linear/Conv layers)")
    adapter_rank: int | None = Field(default=None, ge=1, le=4096,
                                     description="rank r of the adapter's low-rank update")
    adapter_alpha: float | None = Field(default=None, gt=0, le=1e6,
                                        description="the update is scaled by alpha / rank")
    adapter_dropout: float | None = Field(default=None, ge=0.0, lt=1.0,
                                          description="dropout on the adapter's input while "
                                          "training with dropout")
    distill_from: str | None = Field(
        default=None, min_length=1,
        description=f"while distilling, match this layer's output to a teacher layer: its "
                    f"name, {SAME_LAYER!r} (the teacher's layer of the same name; inherited by "
                    f"every weighted layer below) or {NO_MATCH!r}")
    distill_weight: float | None = Field(default=None, ge=0.0,
                                         description="weight of that match in the loss")

    @field_validator("granularity")
    @classmethod
    def _known_granularity(cls, value: str | None) -> str | None:
        if value is None or value in ("unstructured", "channels"):
            return value
        nm = parse_nm(value)
        if nm is None or not 0 < nm[0] < nm[1] <= 32:
            raise ValueError(
                "use unstructured, channels, or N:M with 0 < N < M <= 32 (e.g. 2:4)"
            )
        return value

    @field_validator("group_size")
    @classmethod
    def _power_of_two(cls, value: int | None) -> int | None:
        if value is not None and value & (value - 1):
            raise ValueError(f"group size {value}: use a power of two (32, 64, 128)")
        return value

    def is_empty(self) -> bool:
        return not self.model_dump(exclude_none=True)


FIELDS: tuple[str, ...] = tuple(LayerSpec.model_fields)
