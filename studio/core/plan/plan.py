"""A plan: the specs the user set, keyed by layer name, resolved down the tree by inheritance."""

from __future__ import annotations

from dataclasses import dataclass

from studio.core.graph.tree import LayerTree
from studio.core.plan.spec import FIELDS, LayerSpec, parse_nm

ROOT = ""
DEFAULTS = {"sparsity": 0.0, "granularity": "unstructured", "weight_bits": None,
            "act_bits": None, "exclude": False, "group_size": 32, "adapter": "lora",
            "adapter_rank": 8, "adapter_alpha": 16.0, "adapter_dropout": 0.0,
            "distill_from": None, "distill_weight": 1.0}
"""Values at the top of the inheritance chain; ``None`` bits mean "as the model stores them"."""


@dataclass(frozen=True)
class ResolvedSpec:
    """The settings in force on one node, and which node each came from."""

    sparsity: float
    granularity: str
    weight_bits: str | None
    act_bits: str | None
    exclude: bool
    sources: dict[str, str | None]
    """Field -> name of the node that set it (``None``: the built-in default)."""
    group_size: int = 32
    """Inputs sharing one scale in block-wise (MatMulNBits) integer weights."""
    adapter: str = "lora"
    """Read only when the recipe has an adapters section."""
    adapter_rank: int = 8
    adapter_alpha: float = 16.0
    adapter_dropout: float = 0.0
    distill_from: str | None = None
    """Teacher layer this node's output is matched to while distilling (see
    :func:`studio.core.plan.distill_pairs.plan_feature_pairs`)."""
    distill_weight: float = 1.0

    @property
    def effective_sparsity(self) -> float:
        """What is removed: 0 when excluded, N:M implies 1 - N/M."""
        if self.exclude:
            return 0.0
        nm = parse_nm(self.granularity)
        return 1.0 - nm[0] / nm[1] if nm else self.sparsity

    def inherited(self, field: str, node_name: str) -> bool:
        return self.sources[field] != node_name


class Plan:
    """Mutable map of layer name -> :class:`LayerSpec`; ``""`` holds the model-wide defaults."""

    def __init__(self, specs: dict[str, LayerSpec] | None = None) -> None:
        self.specs: dict[str, LayerSpec] = {
            name: spec for name, spec in (specs or {}).items() if not spec.is_empty()
        }

    def spec(self, name: str) -> LayerSpec:
        return self.specs.get(name) or LayerSpec()

    def set_spec(self, name: str, spec: LayerSpec) -> None:
        if spec.is_empty():
            self.specs.pop(name, None)
        else:
            self.specs[name] = spec

    def set_field(self, name: str, field: str, value: object) -> None:
        """Set (or, with ``None``, clear) one field on one node; validated by pydantic."""
        values = self.spec(name).model_dump()
        values[field] = value
        self.set_spec(name, LayerSpec.model_validate(values))

    def copy(self) -> Plan:
        return Plan(dict(self.specs))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self.specs == other.specs

    def resolve(self, tree: LayerTree) -> list[ResolvedSpec]:
        """Settings in force on every node of ``tree``, indexed by node id."""
        resolved: list[ResolvedSpec] = []
        base = dict(DEFAULTS)
        base_sources: dict[str, str | None] = dict.fromkeys(FIELDS)
        for node in tree.nodes:
            if node.parent is None:
                values, sources = dict(base), dict(base_sources)
            else:
                parent = resolved[node.parent]
                values = {field: getattr(parent, field) for field in FIELDS}
                sources = dict(parent.sources)
            own = self.specs.get(node.name)
            if own is not None:
                for field, value in own.model_dump(exclude_none=True).items():
                    values[field] = value
                    sources[field] = node.name
            resolved.append(ResolvedSpec(**values, sources=sources))
        return resolved
