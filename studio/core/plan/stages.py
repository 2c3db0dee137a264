"""Recipe sections that say how a plan is carried out: data, recovery training, pruning schedule,
distillation, quantization and export. Each is optional; a missing one means its defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(_Section):
    source: Literal["demo"] = "demo"
    calibration_samples: int = Field(default=256, ge=1, le=100_000)
    train_samples: int | None = Field(default=None, ge=1,
                                      description="fine-tune on the first N training samples")


class TrainSection(_Section):
    """Recovery fine-tuning after pruning (and QAT); ``epochs: 0`` skips it."""

    epochs: int = Field(default=1, ge=0, le=1000)
    lr: float = Field(default=1e-3, gt=0, le=1.0)
    batch_size: int = Field(default=64, ge=1, le=65536)
    weight_decay: float = Field(default=0.0, ge=0)
    seed: int = 0
    device: str = Field(default="cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$")


class PruneSection(_Section):
    importance: Literal["magnitude", "taylor"] = "magnitude"
    schedule: Literal["oneshot", "agp"] = "oneshot"
    agp_steps: int = Field(default=4, ge=1, le=100)
    global_unstructured: bool = False


class FeaturePair(_Section):
    student: str
    teacher: str
    weight: float = Field(default=1.0, ge=0)


class DistillSection(_Section):
    """Knowledge distillation during recovery; the uncompressed model is the teacher."""

    temperature: float = Field(default=4.0, gt=0, le=100)
    alpha: float = Field(default=0.7, ge=0, le=1)
    features: list[FeaturePair] = Field(default_factory=list)
    relation_weight: float = Field(default=0.0, ge=0)


class QuantizeSection(_Section):
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    qat: bool = False
    """Fine-tune with fake quantization at the plan's bits before exporting."""


class ExportSection(_Section):
    opset: int = Field(default=17, ge=13, le=23)
    latency_batch: int = Field(default=64, ge=1, le=4096)
    latency_repeats: int = Field(default=20, ge=1, le=10_000)
