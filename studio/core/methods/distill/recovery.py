"""A recipe's ``distill`` section turned into what the training loop takes: the loss, the extra
parameters to learn, how to clean up, and what to report afterwards. The recover step and the
distillation benchmark both build their runs here, so the benchmark measures what runs do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from studio.core.data.task import TaskData
from studio.core.errors import StudioError
from studio.core.methods.distill.distiller import (
    CacheSettings,
    FeaturePair,
    KDConfig,
    KDLoss,
    make_kd_loss,
    training_parameters,
)
from studio.core.methods.distill.mutual import MutualLoss, keep_better, make_peer
from studio.core.methods.distill.self_distill import SelfDistillLoss, default_self_layers
from studio.core.methods.distill.sources import open_teacher
from studio.core.plan.stages import DistillSection, TeacherSource
from studio.core.train.loop import evaluate

FIT_SAMPLES = 64
"""Calibration samples the feature projections are fitted on before training."""


@dataclass
class Distillation:
    loss_fn: Any
    parameters: list[nn.Parameter]
    close: Callable[[], None]
    logs: list[str] = field(default_factory=list)
    finish: Callable[[], dict[str, Any]] = dict
    """Call after training: keeps the better mutual-learning student, and returns what the
    stage report should add (cache size and hit rate, the students' scores)."""
    after_step: Callable[[int], None] | None = None
    """For the training loop's ``after_step``: advances the loss's own schedule."""


def _cache_report(loss: KDLoss) -> dict[str, Any]:
    stats = loss.cache_stats()
    if not stats:
        return {}
    total_hits, total_misses = sum(s.hits for s in stats), sum(s.misses for s in stats)
    seen = total_hits + total_misses
    return {"teacher_cache": {
        "bytes": sum(s.bytes for s in stats), "on_disk": any(s.on_disk for s in stats),
        "hits": total_hits, "misses": total_misses,
        "hit_rate": round(total_hits / seen, 4) if seen else 0.0,
        "teachers": [s.to_json() for s in stats]}}


def _teachers(section: DistillSection, original: nn.Module, trust: bool,
              base_dir: Path | None) -> tuple[list[Any], list[float]]:
    sources = section.teachers or [TeacherSource()]
    names = [p.teacher for p in section.features]
    opened: list[Any] = []
    try:
        for index, source in enumerate(sources):
            opened.append(open_teacher(source.path, original, names if index == 0 else (),
                                       source.architecture, trust, base_dir,
                                       "teacher" if index == 0 else f"teacher {index}"))
    except BaseException:
        for teacher in opened:
            teacher.close()
        raise
    return opened, [s.weight for s in sources]


def build_distillation(section: DistillSection, student: nn.Module, original: nn.Module,
                       example: Tensor, data: TaskData, out_dir: Path | None = None,
                       base_dir: Path | None = None, trust: bool = False, seed: int = 0,
                       device: str = "cpu", total_steps: int = 0) -> Distillation:
    """The loss for ``section.mode``: teachers (cached per sample unless ``cache: off``; disk
    caches go under ``out_dir``), self-distillation, or mutual learning with a peer.
    ``total_steps``, the run's optimiser steps, sizes ``alpha_warmup``."""
    if section.mode != "teacher" and not data.labelled:
        raise StudioError(f"distill.mode {section.mode}: needs labels, and this data has "
                          "none; use mode teacher (the uncompressed model's outputs)")
    if section.mode == "self":
        layers = section.self_layers or default_self_layers(student)
        loss = SelfDistillLoss(student, layers, example, section.temperature, section.alpha,
                               section.aux_weight, seed)
        return Distillation(loss, training_parameters(student, loss.extra_parameters),
                            loss.close, [f"Self-distillation: auxiliary heads on "
                                         f"{', '.join(layers)} (dropped at export)"])
    if section.mode == "mutual":
        peer = make_peer(student, seed).to(example.device)
        mutual = MutualLoss(student, peer, section.temperature, section.alpha)

        def finish() -> dict[str, Any]:
            def score(model: nn.Module, split: Any) -> float:
                return evaluate(model, split, device=device, metric="accuracy")

            return {"mutual": keep_better(student, peer, data.calibration, score)}

        return Distillation(mutual, training_parameters(student, list(peer.parameters())),
                            lambda: None,
                            ["Mutual learning: the model and a perturbed copy learn from each "
                             "other; the one scoring higher on the calibration split is kept"],
                            finish)
    teachers, weights = _teachers(section, original, trust, base_dir)
    config = KDConfig(temperature=section.temperature, alpha=section.alpha,
                      feature_pairs=tuple(FeaturePair(p.student, p.teacher, p.weight)
                                          for p in section.features),
                      relation_weight=section.relation_weight,
                      teacher_weights=tuple(weights) if len(weights) > 1 else None,
                      teacher_weighting=section.teacher_weighting, seed=seed,
                      alpha_warmup_steps=round(section.alpha_warmup * total_steps),
                      projection_init=section.projection_init,
                      decoupled=((section.dkd_target_weight, section.dkd_nontarget_weight)
                                 if section.logit_loss == "dkd" else None),
                      augment=section.augment)
    cache = None if section.cache == "off" or section.augment != "none" else CacheSettings(
        len(data.train), section.cache, out_dir)
    fit = data.calibration.tensors[0][:FIT_SAMPLES].to(example.device) if (
        section.features and len(data.calibration)) else None
    setup = make_kd_loss(student, teachers, config, example, cache, fit)
    logs = [] if data.labelled else ["No labels: distilling without the cross-entropy term"]
    if len(teachers) > 1:
        logs.append(f"{len(teachers)} teachers ({', '.join(t.name for t in teachers)}), "
                    f"{section.teacher_weighting} weighting")
    if section.augment != "none":
        logs.append(f"Consistent augmentation ({section.augment}): teacher and student see "
                    "the same augmented batch; teacher cache off, since every step shows the "
                    "teacher new inputs")
    if config.decoupled is not None:
        logs.append(f"Decoupled KD: target-class weight {section.dkd_target_weight}, "
                    f"non-target weight {section.dkd_nontarget_weight}")
    if config.alpha_warmup_steps:
        logs.append(f"KD weight rises from 0 to {section.alpha} over the first "
                    f"{config.alpha_warmup_steps} steps")
    cache_off = {"teacher_cache_off": f"augment {section.augment}: teacher and student see a "
                 "newly augmented batch every step, which no cache of the teacher's outputs "
                 "can serve"} if section.augment != "none" else {}
    return Distillation(setup.loss_fn, training_parameters(student, setup.extra_parameters),
                        setup.close, logs, lambda: _cache_report(setup.loss_fn) | cache_off,
                        setup.loss_fn.after_step)
