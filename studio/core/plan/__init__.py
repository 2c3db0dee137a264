"""The compression plan: per-layer specs, inherited down the layer tree, and their estimates."""

from studio.core.plan.plan import Plan, ResolvedSpec
from studio.core.plan.spec import ACT_BITS, FIELDS, WEIGHT_BITS, LayerSpec

__all__ = ["ACT_BITS", "FIELDS", "WEIGHT_BITS", "LayerSpec", "Plan", "ResolvedSpec"]
