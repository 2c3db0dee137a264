"""The plan's per-layer distillation settings turned into the distill section's feature pairs:
the one conversion the run uses, so what the tree's column shows is what is trained."""

from __future__ import annotations

from collections.abc import Iterable

from studio.core.graph.tree import LayerTree
from studio.core.plan.plan import ResolvedSpec
from studio.core.plan.spec import NO_MATCH, SAME_LAYER
from studio.core.plan.stages import FeaturePair


def plan_feature_pairs(tree: LayerTree, resolved: list[ResolvedSpec]) -> list[FeaturePair]:
    """One pair per layer the plan matches to a teacher layer.

    ``same`` applies to every weighted layer it reaches (set on a block, each conv in it is
    matched to its namesake); a named teacher layer applies only where it was set (its
    children would all copy the one teacher output); ``none`` or excluded layers make none.
    """
    pairs = []
    for node in tree.nodes:
        spec = resolved[node.id]
        teacher = spec.distill_from
        if node.parent is None or teacher in (None, NO_MATCH) or spec.exclude:
            continue
        if teacher == SAME_LAYER:
            if node.prunable:
                pairs.append(FeaturePair(student=node.name, teacher=node.name,
                                         weight=spec.distill_weight))
        elif spec.sources["distill_from"] == node.name:
            pairs.append(FeaturePair(student=node.name, teacher=teacher,
                                     weight=spec.distill_weight))
    return pairs


def merged_pairs(section: Iterable[FeaturePair], plan: Iterable[FeaturePair]
                 ) -> list[FeaturePair]:
    """The distill section's own pairs, then the plan's for students it does not name."""
    own = list(section)
    named = {pair.student for pair in own}
    return [*own, *(pair for pair in plan if pair.student not in named)]
