"""Recover what compression lost by training the torch model: fine-tuning with labels,
distillation from the uncompressed model (``distill``), or, without labels, matching the
uncompressed model's outputs (and a transformer's hidden states)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from torch import nn

from studio.core.graph.roles import BLOCK, is_hf_block
from studio.core.jobs import Event, Log, Metric
from studio.core.methods.distill import (
    FeaturePair,
    KDConfig,
    OutputMatchingLoss,
    default_teacher,
    make_kd_loss,
    matching_kind,
)
from studio.core.methods.distill.distiller import training_parameters
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.step import Need, StageReport, Step
from studio.core.plan.distill_pairs import merged_pairs, plan_feature_pairs
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import TrainSection
from studio.core.train.loop import TrainConfig, cross_entropy, evaluate, resolve_device, train


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
        config = TrainConfig(epochs=section.epochs, lr=section.lr, batch_size=section.batch_size,
                             weight_decay=section.weight_decay, seed=section.seed,
                             device=str(device))
        loss_fn: Any = cross_entropy
        parameters, close = None, None
        stage = "fine-tune"
        if not data.labelled and recipe.distill is None:
            kind = matching_kind(data.metric)
            modules = dict(original.named_modules())
            blocks = [node.name for node in context.workspace.tree.nodes  # HF: tensors out
                      if node.role == BLOCK and is_hf_block(modules.get(node.name, nn.Module()))]
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
            kd = KDConfig(temperature=recipe.distill.temperature, alpha=recipe.distill.alpha,
                          feature_pairs=tuple(FeaturePair(p.student, p.teacher, p.weight)
                                              for p in merged_pairs(recipe.distill.features,
                                                                    plan_pairs)),
                          relation_weight=recipe.distill.relation_weight)
            teacher = default_teacher(original)
            assert context.workspace.example is not None
            example = context.workspace.example.make_tensor().to(device)
            setup = make_kd_loss(model, teacher, kd, example)
            loss_fn, close = setup.loss_fn, setup.close
            parameters = training_parameters(model, setup.extra_parameters)
            stage = "distill"
            if not data.labelled:
                yield Log("No labels: distilling without the cross-entropy term")
        yield Log(f"Recovering {data.metric}: {section.epochs} epoch(s) of {stage} on {device}")
        try:
            yield from train(model, data.train, config, context.token, loss_fn, stage,
                             context.after_step, parameters, dropout=stage != "match")
        finally:
            if close is not None:
                close()
        value = evaluate(model, data.test, context.token, str(device), metric=data.metric,
                         reference=context.backend.reference)
        yield Metric(stage, data.metric, value, section.epochs)
        report = {"kind": stage, "epochs": section.epochs,
                  "torch_metric": {"name": data.metric, "value": value}}
        if stage == "distill" and recipe.distill is not None:
            report["distill"] = recipe.distill.model_dump(mode="json")
        return report
