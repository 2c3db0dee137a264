"""Recipe sections that say how a plan is carried out: data, recovery training, pruning schedule,
distillation, quantization and export. Each is optional; a missing one means its defaults."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageOptions(_Section):
    """How an image folder becomes tensors: resize, colour mode, then (x - mean) / std."""

    size: tuple[int, int] | None = Field(
        default=None, description="(height, width) every image is resized to; None keeps the "
        "size, which must then be the same for every image")
    channels: Literal[1, 3] = 3
    """1: greyscale, 3: RGB."""
    mean: list[float] = Field(default_factory=lambda: [0.0])
    """Per channel (or one value for all), applied to pixels scaled to 0..1."""
    std: list[float] = Field(default_factory=lambda: [1.0])


class DataSection(_Section):
    """Where the task's data comes from and how it is split.

    Sources: ``demo`` (built-in digits); ``images`` (a folder with one sub-folder per class, or
    a flat folder of unlabelled images); ``arrays`` (.npz with inputs and optional labels, or a
    .npy of inputs); ``csv`` (numeric feature columns, an optional label column); ``function``
    (``package.module:function`` returning an iterable of batches; runs code, so only with the
    user's consent). Paths are relative to the recipe's or project's folder.

    Without labels the metric is agreement with the uncompressed model (cosine similarity of
    outputs, top-1 agreement, MSE) instead of accuracy.
    """

    source: Literal["demo", "images", "arrays", "csv", "function"] = "demo"
    path: str | None = None
    """Folder (images), .npz/.npy (arrays) or .csv file; for ``function``: ``pkg.mod:fn``."""
    test_path: str | None = None
    """A separate evaluation set of the same kind; without it ``test_fraction`` is held out."""
    inputs_key: str | list[str] | None = None
    """.npz array holding the inputs; default: the first of x, inputs, images, input_ids, data.
    A list names several arrays, each fed to the ONNX file's input of the same name (a model
    taking ``input`` and ``state``, say); every array holds one row per sample."""
    constants: dict[str, Any] = Field(default_factory=dict)
    """ONNX inputs fed the same value with every batch, by input name: a number or a nested
    list of numbers (``sr: 16000``), cast to the type the file declares."""
    labels_key: str | None = None
    """.npz array holding the labels; default: the first of y, labels, targets if present."""
    label_column: str | None = None
    """CSV column holding integer class labels; without it a CSV is unlabelled."""
    labelled: bool | None = None
    """False ignores labels even when the data has them; None: use labels when present."""
    metric: Literal["auto", "accuracy", "cosine", "top1_agreement", "mse"] = "auto"
    """auto: accuracy with labels, cosine agreement with the uncompressed model without."""
    image: ImageOptions = Field(default_factory=ImageOptions)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    split_seed: int = 0
    """Seed of the shuffle that draws the test and calibration splits."""
    calibration_samples: int = Field(default=256, ge=1, le=100_000)
    """Drawn from the training split, never from the test split."""
    train_samples: int | None = Field(default=None, ge=1,
                                      description="fine-tune on the first N training samples")
    max_samples: int = Field(default=50_000, ge=1, le=10_000_000)
    """``function`` sources: stop reading after this many samples (an endless generator
    cannot hang the job)."""

    @field_validator("inputs_key")
    @classmethod
    def _distinct_keys(cls, keys: str | list[str] | None) -> str | list[str] | None:
        if isinstance(keys, list):
            if not keys:
                raise ValueError("name at least one array")
            repeated = sorted({key for key in keys if keys.count(key) > 1})
            if repeated:
                raise ValueError(f"{', '.join(repeated)} named more than once")
        return keys

    @field_validator("constants")
    @classmethod
    def _numeric_constants(cls, constants: dict[str, Any]) -> dict[str, Any]:
        for name, value in constants.items():
            try:
                kind = np.asarray(value).dtype.kind
            except ValueError:  # ragged nested lists
                kind = "O"
            if kind not in "biuf" or isinstance(value, str):
                raise ValueError(f"{name}: give a number or a nested list of numbers (a "
                                 f"rectangular array), not {value!r}")
        return constants

    @model_validator(mode="after")
    def _needs_path(self) -> DataSection:
        if self.source != "demo" and not self.path:
            hint = "package.module:function" if self.source == "function" else "a file or folder"
            raise ValueError(f"source {self.source!r} needs path: {hint}")
        if self.source == "function" and ":" not in (self.path or ""):
            raise ValueError("source 'function' needs path: package.module:function")
        if isinstance(self.inputs_key, list):
            if self.source != "arrays":
                raise ValueError("inputs_key as a list names .npz arrays: only for source "
                                 "'arrays'")
            both = sorted(set(self.inputs_key) & set(self.constants))
            if both:
                raise ValueError(f"{', '.join(both)}: given both as an array (inputs_key) "
                                 "and in constants; keep one")
        return self


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
    reconstruct: bool = True
    """After cutting heads or FFN width, re-fit each cut block's output projection by least
    squares to the uncompressed model's outputs on the calibration split (no labels needed)."""
    bn_recalibration: bool = Field(
        default=False, description="after pruning, re-estimate every BatchNorm's running "
        "mean and variance on the calibration split (no labels, no training): recovers much "
        "of what pruning lost when there is no fine-tuning")


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
    weight_only: bool = False
    """int8 weights with float activations on MatMul/Gemm: 8-bit weight-only MatMulNBits
    (float compute) instead of dynamic int8. Keeps accuracy closest to fp32, but on CPU it runs
    no faster than fp32 and leaves embeddings float; dynamic int8 is smaller and faster."""


class ExportSection(_Section):
    opset: int = Field(default=17, ge=13, le=23)
    latency_batch: int = Field(default=64, ge=1, le=4096)
    latency_repeats: int = Field(default=20, ge=1, le=10_000)
