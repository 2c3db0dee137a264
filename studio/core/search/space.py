"""What a search chooses and how a choice becomes something to evaluate.

A :class:`SearchSpace` is Optuna distributions by parameter name; the driver asks the study for
a whole set of parameters at once (ask/tell), so a trial is plain data that crosses to a worker
process or a Ray node. :class:`CompressionSpace` searches the plan: per dependency group the
sparsity and granularity (coupled layers share a channel cut, or the model no longer runs), per
layer the weight bits. Another search (elastic subnets) brings its own space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from optuna.distributions import BaseDistribution, CategoricalDistribution

from studio.core.errors import StudioError
from studio.core.graph.tree import LayerTree
from studio.core.plan.ort_rules import NBITS
from studio.core.plan.plan import Plan, ResolvedSpec
from studio.core.plan.spec import LayerSpec
from studio.core.search.settings import SearchSettings

FLOAT = "fp32"


class SearchSpace(Protocol):
    def distributions(self) -> dict[str, BaseDistribution]:
        """Parameter name -> the values it may take (a fixed space: NSGA-II crosses over it)."""
        ...


def unit_key(unit: Sequence[str]) -> str:
    return "+".join(unit)


class CompressionSpace:
    """Plans over ``layers`` (grouped into ``units`` that share a cut) on top of ``base``."""

    def __init__(self, settings: SearchSettings, layers: Sequence[str],
                 groups: Mapping[str, Sequence[str]], base: Plan,
                 conv_layers: Sequence[str] = ()) -> None:
        self.settings, self.base = settings, base
        self.layers = list(layers)
        self.conv_layers = set(conv_layers)
        self.units: list[list[str]] = []
        seen: set[str] = set()
        for name in self.layers:
            if name in seen:
                continue
            unit = [member for member in groups.get(name, [name]) if member in self.layers]
            unit = unit or [name]
            seen.update(unit)
            self.units.append(unit)

    def distributions(self) -> dict[str, BaseDistribution]:
        settings = self.settings
        found: dict[str, BaseDistribution] = {}
        for unit in self.units:
            key = unit_key(unit)
            found[f"sparsity/{key}"] = CategoricalDistribution(settings.sparsity_levels)
            if len(settings.granularities) > 1:
                found[f"granularity/{key}"] = CategoricalDistribution(settings.granularities)
        for name in self.layers:
            offered = self.bits(name)
            if len(offered) > 1:
                found[f"bits/{name}"] = CategoricalDistribution(offered)
        return found

    def bits(self, name: str) -> list[str]:
        """The weight bits offered on a layer. A convolution is not offered int4/int2 beside
        int8: onnxruntime stores them as int8, so they would cost accuracy and save nothing."""
        offered = self.settings.bits
        if name in self.conv_layers and "int8" in offered:
            return [bits for bits in offered if bits not in NBITS]
        return list(offered)

    def plan(self, params: Mapping[str, Any]) -> Plan:
        """The base plan with the searched fields of every searched layer set from ``params``."""
        settings = self.settings
        plan = self.base.copy()
        for unit in self.units:
            key = unit_key(unit)
            sparsity = float(params.get(f"sparsity/{key}", 0.0))
            granularity = str(params.get(f"granularity/{key}", settings.granularities[0]))
            for name in unit:
                bits = str(params.get(f"bits/{name}", settings.bits[0]))
                values = plan.spec(name).model_dump()
                values.update(sparsity=sparsity, granularity=granularity,
                              weight_bits=bits,
                              act_bits="int8" if bits == "int8" else FLOAT)
                plan.set_spec(name, LayerSpec.model_validate(values))
        return plan


    def params_of(self, resolved: Mapping[str, ResolvedSpec]) -> dict[str, Any]:
        """The parameters closest to a plan already resolved per layer (a recipe's, an
        allocator's proposal): per unit the offered sparsity level nearest its first layer's,
        that layer's granularity if offered, per layer the offered bits nearest its own. A
        study seeded with them starts from what is known to work."""
        distributions = self.distributions()
        found: dict[str, Any] = {}
        for unit in self.units:
            key, spec = unit_key(unit), resolved[unit[0]]
            found[f"sparsity/{key}"] = min(self.settings.sparsity_levels,
                                           key=lambda level: abs(level
                                                                 - spec.effective_sparsity))
            if f"granularity/{key}" in distributions:
                offered = self.settings.granularities
                found[f"granularity/{key}"] = (spec.granularity if spec.granularity in offered
                                               else offered[0])
        for name in self.layers:
            if f"bits/{name}" in distributions:
                bits = _bit_count(resolved[name].weight_bits)
                found[f"bits/{name}"] = min(self.bits(name),
                                            key=lambda offered: abs(_bit_count(offered) - bits))
        return found


def _bit_count(bits: str | None) -> int:
    """32 for fp32 (and weights as the model stores them), 16, 8, 4, 2 for the others."""
    return 32 if bits is None else int(bits.lstrip("abfinpt"))


def searched_layers(tree: LayerTree, asked: Sequence[str] | None) -> list[str]:
    """The tree's prunable layers, or those asked for (each must be one)."""
    prunable = [node.name for node in tree.nodes if node.prunable]
    if asked is None:
        return prunable
    unknown = [name for name in asked if name not in prunable]
    if unknown:
        raise StudioError(f"search: {', '.join(map(repr, unknown))} is not a prunable layer "
                          "of the model (a Conv or Linear with a weight)")
    return list(asked)
