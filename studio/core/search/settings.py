"""What a search is asked to do: objectives, constraints, budget, the choices searched, the
fidelity schedule and where trials run. One pydantic model, so the CLI, the job spec and the
window's dialog validate it the same way."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from studio.core.export.measure import DEFAULT_THREADS
from studio.core.plan.spec import GRANULARITIES, WEIGHT_BITS

Cost = Literal["bytes", "macs", "latency"]
COSTS: tuple[str, ...] = ("bytes", "macs", "latency")


class SearchSettings(BaseModel):
    """A compression search. ``costs`` are what the plan should shrink, each a ratio to the
    original (the task metric is always an objective, scored on a validation split carved
    from the training data). With one cost and ``max_drop_pt`` set, the search is
    single-objective TPE under the constraint; otherwise NSGA-II finds the front."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    costs: list[Cost] = Field(default_factory=lambda: ["bytes"], min_length=1)
    """bytes (the exported file's), macs, latency (measured in onnxruntime at full fidelity)."""
    max_drop_pt: float | None = Field(default=None, ge=0)
    """Constraint: the largest metric drop, in points, a plan may have."""
    max_cost_ratio: float | None = Field(default=None, gt=0, le=1)
    """Constraint: the largest ratio of the first cost to the original (0.5: half)."""
    trials: int = Field(default=40, ge=1, le=100_000)
    """Trials in the whole study, those of an earlier (resumed) run included."""
    minutes: float | None = Field(default=None, gt=0)
    """Stop this run after this many minutes (finished trials are kept)."""
    population: int = Field(default=8, ge=2, le=1000)
    """Trials asked for at once (a generation): the same for any number of workers, so the
    results do not depend on how many run in parallel."""
    seed: int = 0
    """Seed of the sampler: the same seed gives the same trials."""
    sparsity_levels: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75])
    granularities: list[str] = Field(default_factory=lambda: ["channels"])
    """Offered per group. Channels by default: unstructured zeros are stored dense in ONNX and
    run dense in onnxruntime, so they lower none of the costs and only cost accuracy."""
    bits: list[str] = Field(default_factory=lambda: ["fp32", "int8"])
    """Weight bits offered per layer; fp32 leaves the layer float. int8 layers quantize their
    activations to int8 too (static QDQ)."""
    layers: list[str] | None = None
    """The prunable layers searched; None: all of them."""
    validation_samples: int = Field(default=500, ge=10)
    """Training samples held out to score trials on (never the test split)."""
    proxy_samples: int = Field(default=512, ge=10)
    """Calibration samples for the proxy's BatchNorm re-estimation."""
    promote_fraction: float = Field(default=0.25, gt=0, le=1)
    """Successive halving: the best share of each generation (by the proxy) runs at full
    fidelity; 0 < f <= 1."""
    full_fidelity: bool = True
    """Run promoted trials through the whole pipeline (recovery, export, ORT timing)."""
    full_epochs: int = Field(default=1, ge=0, le=100)
    """Recovery epochs of a full-fidelity trial."""
    workers: int = Field(default=1, ge=1, le=256)
    """Local worker processes (ignored with ray_address)."""
    ray_address: str | None = None
    """Run trials on a Ray cluster ('auto', 'local' or host:port) instead of local processes."""
    space: Literal["plan", "subnet"] = "plan"
    """plan: each layer's sparsity and bits; subnet: widths and depths of a once-for-all
    supernet trained from the model first (no retraining per trial; the chosen subnet is
    fine-tuned for full_epochs; sparsity levels, granularities, bits and layers are unused)."""
    widths: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    """subnet: shares of each channel group's channels a subnet may keep (most important
    first)."""
    skip_blocks: bool = True
    """subnet: residual blocks may be skipped (elastic depth)."""
    latency_threads: int = Field(default=DEFAULT_THREADS, ge=1, le=256)
    """onnxruntime threads latency is measured with (at the recipe's export.latency_batch)."""
    supernet_epochs: int = Field(default=4, ge=1, le=100)
    """subnet: epochs of supernet training (progressive shrinking, in-place distillation);
    trained once per search folder."""

    @field_validator("sparsity_levels")
    @classmethod
    def _levels(cls, levels: list[float]) -> list[float]:
        bad = [level for level in levels if not 0.0 <= level < 1.0]
        if bad or not levels:
            raise ValueError(f"sparsity levels lie in [0, 1); got {bad or 'none'}")
        return levels

    @field_validator("widths")
    @classmethod
    def _widths(cls, widths: list[float]) -> list[float]:
        bad = [width for width in widths if not 0.0 < width <= 1.0]
        if bad or not widths:
            raise ValueError(f"widths lie in (0, 1]; got {bad or 'none'}")
        return widths

    @field_validator("granularities")
    @classmethod
    def _granularities(cls, values: list[str]) -> list[str]:
        bad = [value for value in values if value not in GRANULARITIES]
        if bad or not values:
            raise ValueError(f"use some of {', '.join(GRANULARITIES)}; got {bad or 'none'}")
        return values

    @field_validator("bits")
    @classmethod
    def _bits(cls, values: list[str]) -> list[str]:
        bad = [value for value in values if value not in WEIGHT_BITS]
        if bad or not values:
            raise ValueError(f"use some of {', '.join(WEIGHT_BITS)}; got {bad or 'none'}")
        return values

    @model_validator(mode="after")
    def _distinct_costs(self) -> SearchSettings:
        if len(set(self.costs)) != len(self.costs):
            raise ValueError("a cost is named twice")
        return self

    @property
    def single_objective(self) -> bool:
        """TPE on the first cost under the drop constraint, instead of an NSGA-II front."""
        return len(self.costs) == 1 and self.max_drop_pt is not None
