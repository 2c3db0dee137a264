"""Re-estimate batch-norm running statistics on the calibration split after pruning.

Pruning shifts the activations every BatchNorm normalises, while its running mean and variance
still describe the unpruned model; re-estimating them (forward passes only, no labels, no
gradients) recovers much of the loss without any fine-tuning
(:func:`~studio.core.train.batch_norm.reestimate_batch_norms`, shared with the subnet search).
"""

from __future__ import annotations

from collections.abc import Generator

from studio.core.jobs import Event, Log
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.step import Need, StageReport, Step
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import PruneSection, TrainSection
from studio.core.train.batch_norm import batch_norms, reestimate_batch_norms


class BnRecalibration(Step):
    name = "bn_recalibration"
    settings = PruneSection
    needs = frozenset({Need.TORCH})

    def asks_for(self, recipe: Recipe) -> list[str]:
        asked = recipe.prune is not None and recipe.prune.bn_recalibration
        return ["prune.bn_recalibration (re-estimates the torch model's BatchNorm layers)"
                ] if asked else []

    def applies(self, context: RunContext) -> bool:
        return (context.settings(PruneSection).bn_recalibration
                and bool(batch_norms(context.model)))

    def run(self, context: RunContext) -> Generator[Event, None, StageReport]:
        calibration = context.task.calibration
        yield Log(f"BN re-estimation: {len(batch_norms(context.model))} BatchNorm layers on "
                  f"{len(calibration)} calibration samples")
        count = reestimate_batch_norms(context.model, calibration,
                                       context.settings(TrainSection).batch_size, context.token)
        return {"layers": count, "samples": len(calibration)}
