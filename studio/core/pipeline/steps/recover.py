"""Recover what compression lost by training the torch model: fine-tuning with labels,
distillation from the uncompressed model (``distill``), or, without labels, matching the
uncompressed model's outputs (and a transformer's hidden states)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from torch import nn

from studio.core.graph.roles import BLOCK, is_hf_block
from studio.core.jobs import Event, Log, Metric
from studio.core.methods.distill import OutputMatchingLoss, default_teacher, matching_kind
from studio.core.methods.distill.recovery import build_distillation
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.step import Need, StageReport, Step
from studio.core.plan.distill_pairs import merged_pairs, plan_feature_pairs
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import TrainSection
from studio.core.train.checkpointing import checkpoint_candidates
from studio.core.train.loop import (
    TrainConfig,
    cross_entropy,
    evaluate,
    optimizer_steps,
    resolve_device,
    train,
)
from studio.core.train.memory import memory_limit


class Recover(Step):
    name = "recover"
    settings = TrainSection
    needs = frozenset({Need.TORCH})

    def asks_for(self, recipe: Recipe) -> list[str]:
        needs = []
        if recipe.train is not None and recipe.train.epochs > 0:
            needs.append(f"train.epochs: {recipe.train.epochs} (fine-tuning)")
        if recipe.distill is not None:
            needs.append("distill (distillation trains the model)")
        return needs

    def applies(self, context: RunContext) -> bool:
        return context.settings(TrainSection).epochs > 0

    def run(self, context: RunContext) -> Generator[Event, None, StageReport]:
        section, data, recipe = context.settings(TrainSection), context.task, context.recipe
        original = context.workspace.loaded.module
        assert original is not None
        model = context.model
        device = resolve_device(section.device)
        model.to(device)
        modules = dict(original.named_modules())
        blocks = [node.name for node in context.workspace.tree.nodes  # HF: tensors out
                  if node.role == BLOCK and is_hf_block(modules.get(node.name, nn.Module()))]
        config = TrainConfig(
            epochs=section.epochs, lr=section.lr, batch_size=section.batch_size,
            weight_decay=section.weight_decay, seed=section.seed, device=str(device),
            precision=section.precision, accumulation_steps=section.accumulation_steps,
            checkpoint=tuple(checkpoint_candidates(model, blocks))
            if section.gradient_checkpointing else (),
            memory_limit=memory_limit(section.memory_limit_gb, device))
        loss_fn: Any = cross_entropy
        parameters, close, finish = None, None, None
        after_step = context.after_step
        stage = "fine-tune"
        if not data.labelled and recipe.distill is None:
            kind = matching_kind(data.metric)
            matching = OutputMatchingLoss(default_teacher(original).to(device), kind,
                                          blocks=blocks,
                                          pad_token_id=getattr(original, "pad_token_id", None))
            loss_fn, close, stage = matching, matching.close, "match"
            hidden = f", and the hidden states of {len(blocks)} encoder blocks" if blocks else ""
            yield Log("No labels: recovering by matching the uncompressed model's outputs ("
                      f"{'KL of softened scores' if kind == 'logits' else '1 - cosine + MSE'}"
                      f"{hidden}; dropout off)")
        elif recipe.distill is not None:
            tree = context.workspace.tree
            plan_pairs = plan_feature_pairs(tree, context.workspace.plan.resolve(tree))
            distill = recipe.distill.model_copy(update={
                "features": merged_pairs(recipe.distill.features, plan_pairs)})
            assert context.workspace.example is not None
            example = context.workspace.example.make_tensor().to(device)
            distillation = build_distillation(
                distill, model, original, example, data, context.out_dir,
                context.base_dir, context.trust_models, section.seed, str(device),
                optimizer_steps(len(data.train), config))
            loss_fn, close, finish = distillation.loss_fn, distillation.close, distillation.finish
            after_step = both_hooks(context.after_step, distillation.after_step)
            parameters = distillation.parameters
            stage = "distill"
            for line in distillation.logs:
                yield Log(line)
        yield Log(f"Recovering {data.metric}: {section.epochs} epoch(s) of {stage} on {device}")
        extra: dict[str, Any] = {}
        try:
            summary = yield from train(model, data.train, config, context.token, loss_fn, stage,
                                       after_step, parameters,
                                       dropout=stage != "match")
            if finish is not None:
                extra = finish()
        finally:
            if close is not None:
                close()
        context.note(f"Recovery ({stage}) trained in {summary.precision.used}: "
                     f"{summary.precision.reason}.")
        value = evaluate(model, data.test, context.token, str(device), metric=data.metric,
                         reference=context.backend.reference)
        yield Metric(stage, data.metric, value, section.epochs)
        report = {"kind": stage, "epochs": section.epochs,
                  "torch_metric": {"name": data.metric, "value": value},
                  "training": summary.to_json()}
        if stage == "distill" and recipe.distill is not None:
            report["distill"] = recipe.distill.model_dump(mode="json") | extra
            cache = extra.get("teacher_cache")
            if cache:
                context.note(f"Teacher outputs cached: {cache['bytes'] / 2**20:.1f} MB "
                             f"{'on disk' if cache['on_disk'] else 'in memory'}, hit rate "
                             f"{cache['hit_rate']:.0%} ({cache['hits']} of "
                             f"{cache['hits'] + cache['misses']} samples read back)")
            if "teacher_cache_off" in extra:
                context.note(f"Teacher outputs not cached: {extra['teacher_cache_off']}.")
            if "mutual" in extra:
                mutual = extra["mutual"]
                context.note(f"Mutual learning kept the {mutual['kept']} (calibration "
                             f"accuracy {mutual['model']:.3f} model, {mutual['peer']:.3f} "
                             "peer)")
        return report


def both_hooks(first: Callable[[int], None] | None, second: Callable[[int], None] | None
               ) -> Callable[[int], None] | None:
    """One ``after_step`` calling a pruning schedule's hook, then the loss's own."""
    if first is None or second is None:
        return first or second

    def after_step(step: int) -> None:
        first(step)
        second(step)

    return after_step
