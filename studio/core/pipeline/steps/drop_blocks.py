"""Drop whole transformer blocks (``prune.drop_blocks``): those that change their input least
on the calibration split (block influence, 1 - cosine of input and output, as in ShortGPT),
replaced by a pass-through. Runs before the other pruning, which then leaves the dropped
blocks' layers alone, and before recovery, which fine-tunes what remains."""

from __future__ import annotations

from collections.abc import Generator

from studio.core.errors import StudioError
from studio.core.jobs import Event, Log
from studio.core.methods.layerwise.blocks import decoder_blocks
from studio.core.methods.pruning.transformer import block_influence, drop_blocks
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.step import Need, StageReport, Step
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import PruneSection

INFLUENCE_SAMPLES = 32
"""Calibration samples the influence is measured on: a ranking, not an estimate to decimals."""


class DropBlocks(Step):
    name = "drop_blocks"
    settings = PruneSection
    needs = frozenset({Need.TORCH})

    def asks_for(self, recipe: Recipe) -> list[str]:
        count = recipe.prune.drop_blocks if recipe.prune is not None else 0
        return [f"prune.drop_blocks: {count}"] if count else []

    def applies(self, context: RunContext) -> bool:
        return context.settings(PruneSection).drop_blocks > 0

    def run(self, context: RunContext) -> Generator[Event, None, StageReport]:
        count, model = context.settings(PruneSection).drop_blocks, context.model
        prefix, blocks = decoder_blocks(model)
        if count >= len(blocks):
            raise StudioError(f"prune.drop_blocks: {count} of the model's {len(blocks)} blocks "
                              "leaves none; drop fewer")
        names = [f"{prefix}.{number}" for number in range(len(blocks))]
        inputs = context.task.calibration.tensors[0][:INFLUENCE_SAMPLES]
        influence = block_influence(model, names, inputs)
        chosen = sorted(sorted(influence, key=influence.__getitem__)[:count],
                        key=names.index)
        yield Log(f"Dropping {count} of {len(blocks)} blocks: {', '.join(chosen)} (they "
                  "change their input least)")
        assert context.workspace.example is not None
        report = drop_blocks(model, context.workspace.example.make_tensor(), chosen)
        context.note(f"Dropped {count} of {len(blocks)} transformer blocks ({', '.join(chosen)})"
                     f": {report.before.params - report.after.params:,} parameters fewer.")
        return {"dropped": chosen, "influence": {n: round(v, 5) for n, v in influence.items()},
                "params_before": report.before.params, "params_after": report.after.params}
