"""Re-estimate batch-norm running statistics on the calibration split after pruning.

Pruning shifts the activations every BatchNorm normalises, while its running mean and variance
still describe the unpruned model; re-estimating them (forward passes only, no labels, no
gradients) recovers much of the loss without any fine-tuning. Written here rather than taken
from ``torch.optim.swa_utils.update_bn``, which puts the whole model in training mode, so
dropout would disturb the statistics it measures.
"""

from __future__ import annotations

from collections.abc import Generator

import torch
from torch import nn

from studio.core.data.task import batches
from studio.core.jobs import Event, Log
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.step import Need, StageReport, Step
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import PruneSection, TrainSection


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats]


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
                and bool(_batch_norms(context.model)))

    @torch.no_grad()
    def run(self, context: RunContext) -> Generator[Event, None, StageReport]:
        model, norms = context.model, _batch_norms(context.model)
        calibration = context.task.calibration
        was_training = model.training
        saved = [(norm, norm.momentum) for norm in norms]
        model.eval()
        for norm in norms:  # a cumulative average over every batch, from scratch
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
        yield Log(f"BN re-estimation: {len(norms)} BatchNorm layers on {len(calibration)} "
                  "calibration samples")
        try:
            for (inputs, *_) in batches(calibration,
                                        context.settings(TrainSection).batch_size):
                context.token.check()
                model(inputs)
        finally:
            for norm, momentum in saved:
                norm.momentum = momentum
            model.train(was_training)
        return {"layers": len(norms), "samples": len(calibration)}
