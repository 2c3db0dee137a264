"""Distillation as a loss function for the one training loop (``studio.core.train.loop.train``).

``make_kd_loss`` wires teachers, hooks and projections into a ``(model, inputs, labels) -> loss``
callable; the loop stays the only place where optimisation happens.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from studio.core.errors import StudioError
from studio.core.methods.distill.augment import AUGMENTS, AugmentedBatch, ConsistentAugmentation
from studio.core.methods.distill.cache import CachedTeacher, CacheStats, TeacherCache
from studio.core.methods.distill.features import FeatureCapture
from studio.core.methods.distill.losses import (
    confidence_soft_targets,
    distillation_loss,
    feature_kd_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    soft_targets,
)
from studio.core.methods.distill.projection import FeatureProjector, fit_projection
from studio.core.methods.distill.teachers import Teacher, TeacherOutput, TorchTeacher, freeze
from studio.core.train.memory import kept_buffers
from studio.core.util import first_tensor


class FeaturePair(NamedTuple):
    """A student layer taught by a teacher layer (names as in ``named_modules()``)."""

    student: str
    teacher: str
    weight: float = 1.0


@dataclass(frozen=True)
class KDConfig:
    """What to distil and how much each term weighs.

    total = logit_weight * (alpha * KD_T + (1 - alpha) * CE)
            + sum(pair.weight * MSE(proj(student feature), teacher feature))
            + relation_weight * RKD_distance + relation_angle_weight * RKD_angle
    Feature and relation terms use the first teacher; logits average all teachers' softened
    probabilities with ``teacher_weights`` (equal when ``None``). Relation KD runs on
    ``relation_layers`` (student, teacher) outputs, or on the logits when ``None``.
    """

    temperature: float = 4.0
    alpha: float = 0.9
    logit_weight: float = 1.0
    feature_pairs: tuple[FeaturePair, ...] = field(default_factory=tuple)
    relation_weight: float = 0.0
    relation_angle_weight: float = 0.0
    relation_layers: tuple[str, str] | None = None
    teacher_weights: tuple[float, ...] | None = None
    teacher_weighting: Literal["fixed", "confidence"] = "fixed"
    """``confidence``: per sample, each teacher's weight times its top-1 probability there."""
    seed: int = 0
    """Seeds the projections' initial weights, so a run is reproducible."""
    alpha_warmup_steps: int = 0
    """Optimiser steps over which the KD weight rises linearly from 0 to ``alpha`` (the
    cross entropy taking the rest), counted by :meth:`KDLoss.after_step`; 0: alpha from the
    start."""
    projection_init: Literal["least_squares", "random"] = "least_squares"
    """How learned projections start: fitted by least squares on a real batch (the fit
    inputs given to :func:`make_kd_loss`), or random (FitNets)."""
    decoupled: tuple[float, float] | None = None
    """(TCKD weight, NCKD weight): the logit term is decoupled KD instead of the KL
    (:func:`~studio.core.methods.distill.losses.decoupled_kd_loss`); None: the KL."""
    augment: str = "none"
    """Consistent augmentation (:mod:`~studio.core.methods.distill.augment`): none, shift or
    mixup; teacher and student see the same augmented batch, so no cache can serve it."""

    def __post_init__(self) -> None:
        # Recipes hand in lists; normalise to FeaturePair tuples (weight 1 when left out).
        pairs = tuple(FeaturePair(*p) for p in self.feature_pairs)
        object.__setattr__(self, "feature_pairs", pairs)
        if self.relation_layers is not None:
            object.__setattr__(self, "relation_layers", tuple(self.relation_layers))
        if self.teacher_weights is not None:
            object.__setattr__(self, "teacher_weights", tuple(self.teacher_weights))
        problems = []
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if self.alpha_warmup_steps < 0:
            problems.append(f"alpha_warmup_steps must be >= 0, got {self.alpha_warmup_steps}")
        if not 0.0 <= self.alpha <= 1.0:
            problems.append(f"alpha must lie in [0, 1], got {self.alpha}")
        weights = [("logit_weight", self.logit_weight),
                   ("relation_weight", self.relation_weight),
                   ("relation_angle_weight", self.relation_angle_weight),
                   *((f"feature pair {p.student}->{p.teacher} weight", p.weight)
                     for p in pairs)]
        problems += [f"{name} must be >= 0, got {value}" for name, value in weights if value < 0]
        if self.teacher_weights is not None and (
                any(w < 0 for w in self.teacher_weights) or sum(self.teacher_weights) <= 0):
            problems.append(f"teacher_weights must be >= 0 and not all zero, "
                            f"got {self.teacher_weights}")
        if self.logit_weight == 0 and not pairs and not self.uses_relation:
            problems.append("nothing to distil: logit_weight is 0 and there are no feature "
                            "pairs or relation terms")
        if self.decoupled is not None:
            object.__setattr__(self, "decoupled", tuple(self.decoupled))
            if len(self.decoupled) != 2 or any(w < 0 for w in self.decoupled):
                problems.append(f"decoupled must be two weights >= 0 (TCKD, NCKD), got "
                                f"{self.decoupled}")
        if self.augment not in AUGMENTS:
            problems.append(f"augment must be one of {', '.join(AUGMENTS)}, got "
                            f"{self.augment!r}")
        if self.teacher_weighting not in ("fixed", "confidence"):
            problems.append(f"teacher_weighting must be fixed or confidence, got "
                            f"{self.teacher_weighting!r}")
        if self.relation_layers is not None and len(self.relation_layers) != 2:
            problems.append("relation_layers must be (student_layer, teacher_layer)")
        if problems:
            raise StudioError("distillation settings: " + "; ".join(problems))

    @property
    def uses_relation(self) -> bool:
        return self.relation_weight > 0 or self.relation_angle_weight > 0


def default_teacher(model: nn.Module) -> nn.Module:
    """A frozen deep copy of ``model``: self-distillation's teacher.

    Take it BEFORE pruning or quantizing ``model``, so the teacher is the uncompressed network.
    """
    return freeze(copy.deepcopy(model))


def training_parameters(student: nn.Module, extra: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    """The student's trainable parameters plus the projections', for ``train(parameters=...)``
    (which replaces the model's own list, so the student's must be included)."""
    seen: set[int] = set()
    chosen = []
    for p in [*student.parameters(), *extra]:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            chosen.append(p)
    return chosen


def _check_separate(student: nn.Module, teachers: Sequence[nn.Module | Teacher]) -> None:
    own = {id(p) for p in student.parameters()}
    for index, teacher in enumerate(teachers):
        module = teacher.module if isinstance(teacher, TorchTeacher) else teacher
        if isinstance(module, nn.Module) and (
                module is student or any(id(p) in own for p in module.parameters())):
            raise StudioError(
                f"teacher {index} shares weights with the student, so freezing it would freeze "
                "the student; take default_teacher(model) before compressing the model")


@dataclass(frozen=True)
class CacheSettings:
    """Cache frozen teachers' outputs for up to ``capacity`` samples (the training split's
    size); ``mode`` and ``folder`` as :class:`TeacherCache` takes them."""

    capacity: int
    mode: str = "auto"
    folder: Path | None = None


class KDLoss:
    """The distillation loss; call it as ``loss(student, inputs, labels)``.

    ``last`` holds each term of the latest call (detached), for logging without recomputing.
    """

    def __init__(self, student: nn.Module, teachers: Sequence[Teacher], config: KDConfig,
                 projections: nn.ModuleDict, student_capture: FeatureCapture) -> None:
        self.student = student
        self.teachers = list(teachers)
        self.config = config
        self.projections = projections
        self._student_capture = student_capture
        self.last: dict[str, Tensor] = {}
        self.steps_done = 0
        self._closed = False
        self._augmentation = (ConsistentAugmentation(config.augment, config.seed)
                              if config.augment != "none" else None)

    @property
    def alpha(self) -> float:
        """The KD weight now: ``config.alpha``, scaled down linearly during the warm-up."""
        warmup = self.config.alpha_warmup_steps
        return self.config.alpha * (min(1.0, self.steps_done / warmup) if warmup else 1.0)

    def after_step(self, step: int) -> None:
        """The training loop's hook after each optimiser step: advances the alpha warm-up."""
        self.steps_done = step

    def cache_stats(self) -> list[CacheStats]:
        """One entry per cached teacher (none when caching is off)."""
        return [t.cache.stats() for t in self.teachers if isinstance(t, CachedTeacher)]

    def __call__(self, model: nn.Module, inputs: Tensor, labels: Tensor | None = None) -> Tensor:
        if self._closed:
            raise StudioError("this distillation loss was closed; build a new one")
        if model is not self.student:
            raise StudioError("the KD loss was built for another model; pass the student given "
                              "to make_kd_loss (its hooks and projections belong to it)")
        cfg = self.config
        self._student_capture.clear()
        batch = (self._augmentation(inputs, labels) if self._augmentation is not None
                 else AugmentedBatch(inputs, labels))
        inputs = batch.inputs
        with torch.no_grad():
            outputs: list[TeacherOutput] = [teacher(inputs) for teacher in self.teachers]
        teacher_logits = [o.logits for o in outputs]
        first = outputs[0].features
        student_logits = _logits(model(inputs), "student")
        parts: dict[str, Tensor] = {}
        total = student_logits.new_zeros((), dtype=torch.float32)
        if cfg.logit_weight > 0:
            combine = (confidence_soft_targets if cfg.teacher_weighting == "confidence"
                       else soft_targets)
            probs = combine(teacher_logits, cfg.temperature, cfg.teacher_weights)
            parts["logit"] = self._logit_term(student_logits, probs, batch)
            total = total + cfg.logit_weight * parts["logit"]
        for index, pair in enumerate(cfg.feature_pairs):
            term = feature_kd_loss(self._student_capture[pair.student], first[pair.teacher],
                                   self.projections[f"pair{index}"])
            parts[f"feature/{pair.student}"] = term
            total = total + pair.weight * term
        if cfg.uses_relation:
            if cfg.relation_layers is None:
                s_emb, t_emb = student_logits, teacher_logits[0]
            else:
                s_emb = self._student_capture[cfg.relation_layers[0]]
                t_emb = first[cfg.relation_layers[1]]
            if cfg.relation_weight > 0:
                parts["relation"] = rkd_distance_loss(s_emb, t_emb)
                total = total + cfg.relation_weight * parts["relation"]
            if cfg.relation_angle_weight > 0:
                parts["relation_angle"] = rkd_angle_loss(s_emb, t_emb)
                total = total + cfg.relation_angle_weight * parts["relation_angle"]
        self.last = {name: value.detach() for name, value in parts.items()}
        return total

    def _logit_term(self, student_logits: Tensor, probs: Tensor, batch: AugmentedBatch
                    ) -> Tensor:
        """The KD + CE mix; on a mixup batch, the mix of the two terms each set of labels
        gives (mixup's cross entropy; for DKD each label is the target in its share)."""
        cfg = self.config

        def term(labels: Tensor | None) -> Tensor:
            return distillation_loss(student_logits, probs, labels, cfg.temperature, self.alpha,
                                     cfg.decoupled)

        if batch.partner_labels is None:
            return term(batch.labels)
        return batch.share * term(batch.labels) + (1.0 - batch.share) * term(
            batch.partner_labels)

    def close(self) -> None:
        """Remove every hook from student and teachers; safe to call twice."""
        self._student_capture.close()
        for teacher in self.teachers:
            teacher.close()
        self._closed = True


def _logits(output: object, role: str) -> Tensor:
    tensor = first_tensor(output)
    if tensor is None:
        raise StudioError(f"the {role} returned no tensor ({type(output).__name__})")
    return tensor


class KDSetup(NamedTuple):
    """What :func:`make_kd_loss` returns; unpacks as ``loss_fn, extra_parameters, close``."""

    loss_fn: KDLoss
    extra_parameters: list[nn.Parameter]
    close: Callable[[], None]


def _as_teacher(teacher: nn.Module | Teacher, feature_names: Sequence[str], index: int,
                device: torch.device) -> Teacher:
    if isinstance(teacher, nn.Module):
        return TorchTeacher(freeze(teacher).to(device), feature_names if index == 0 else (),
                            "teacher" if index == 0 else f"teacher {index}")
    missing = [n for n in (feature_names if index == 0 else ()) if n not in teacher.feature_names]
    if missing:
        raise StudioError(f"{teacher.name} was opened without the features "
                          f"{', '.join(missing)} the feature pairs name")
    return teacher


def make_kd_loss(student: nn.Module, teachers: nn.Module | Teacher | Sequence[nn.Module | Teacher],
                 config: KDConfig, example_inputs: Tensor,
                 cache: CacheSettings | None = None, fit_inputs: Tensor | None = None
                 ) -> KDSetup:
    """Build the KD loss for ``student``: freeze the teachers, hook the chosen layers, check
    the teachers' outputs against the student's and size the projections from one example
    forward through both; with ``cache``, frozen teachers' outputs are kept per sample.

    Teachers are torch modules (frozen, moved to ``example_inputs``' device) or
    :class:`Teacher` objects (an ONNX file); feature and relation terms use the first.
    Build it after the student has its final shape (after structured pruning): projections are
    sized from the student's current widths. Pass ``training_parameters(student,
    extra_parameters)`` as ``train(parameters=...)`` so the projections learn too, and call
    ``close()`` when done (a ``finally`` block) to remove hooks. ``fit_inputs``, a batch of
    real training inputs, fits the learned projections by least squares before training
    (``config.projection_init``); without it they start random.
    """
    given = [teachers] if isinstance(teachers, nn.Module) or not isinstance(
        teachers, Sequence) else list(teachers)
    if not given:
        raise StudioError("distillation needs at least one teacher")
    if config.teacher_weights is not None and len(config.teacher_weights) != len(given):
        raise StudioError(f"{len(config.teacher_weights)} teacher weights given for "
                          f"{len(given)} teachers")
    if cache is not None and config.augment != "none":
        raise StudioError(f"the teacher cache cannot serve augment {config.augment}: every "
                          "step shows the teacher new inputs; set cache off")
    if config.augment != "none":
        ConsistentAugmentation(config.augment).check(example_inputs)
    device = example_inputs.device
    teacher_names = [p.teacher for p in config.feature_pairs]
    student_names = [p.student for p in config.feature_pairs]
    if config.uses_relation and config.relation_layers is not None:
        student_names.append(config.relation_layers[0])
        teacher_names.append(config.relation_layers[1])
    _check_separate(student, given)
    teacher_list: list[Teacher] = []
    student_capture: FeatureCapture | None = None
    try:
        for index, teacher in enumerate(given):
            teacher_list.append(_as_teacher(teacher, teacher_names, index, device))
        student_capture = FeatureCapture(student, student_names, "student")
        projections = _probe(student, teacher_list, config, example_inputs, student_capture)
        if fit_inputs is not None and config.projection_init == "least_squares":
            _fit(student, teacher_list[0], config, fit_inputs, student_capture, projections)
    except BaseException:
        for teacher in teacher_list:
            teacher.close()
        if student_capture is not None:
            student_capture.close()
        raise
    if cache is not None:
        teacher_list = [CachedTeacher(t, TeacherCache(
            cache.capacity, cache.mode,
            cache.folder / f"teacher-cache-{index}" if cache.folder is not None else None))
            for index, t in enumerate(teacher_list)]
    loss = KDLoss(student, teacher_list, config, projections, student_capture)
    return KDSetup(loss, list(projections.parameters()), loss.close)


def _probe(student: nn.Module, teachers: Sequence[Teacher], config: KDConfig,
           example_inputs: Tensor, student_capture: FeatureCapture) -> nn.ModuleDict:
    """One example forward through everyone: check that every teacher scores the same
    classes as the student (before any training), and size the feature projections."""
    was_training = student.training
    student.eval()  # the probe must not move the student's batch-norm statistics
    try:
        with torch.no_grad():
            student_logits = _logits(student(example_inputs), "student")
            outputs = [teacher(example_inputs) for teacher in teachers]
    finally:
        student.train(was_training)
    if config.logit_weight > 0 or (config.uses_relation and config.relation_layers is None):
        for teacher, output in zip(teachers, outputs, strict=True):
            if output.logits.shape[-1] != student_logits.shape[-1] or (
                    output.logits.shape[0] != student_logits.shape[0]):
                raise StudioError(
                    f"{teacher.name} gives outputs of shape {list(output.logits.shape)} where "
                    f"the student gives {list(student_logits.shape)}: a teacher must score the "
                    "same classes on the same inputs (use feature pairs only, logit_weight 0, "
                    "for a teacher of another task)")
    projections = nn.ModuleDict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for index, pair in enumerate(config.feature_pairs):
            s_feat, t_feat = student_capture[pair.student], outputs[0].features[pair.teacher]
            projection = FeatureProjector(tuple(s_feat.shape), tuple(t_feat.shape))
            projections[f"pair{index}"] = projection.to(device=s_feat.device, dtype=s_feat.dtype)
    student_capture.clear()
    return projections


def _fit(student: nn.Module, teacher: Teacher, config: KDConfig, inputs: Tensor,
         student_capture: FeatureCapture, projections: nn.ModuleDict) -> None:
    """Fit every learned projection on ``inputs``, the student in training mode (batch norms
    on batch statistics, as they will train) with its running statistics left untouched."""
    if not any(isinstance(p, FeatureProjector) and p.learned for p in projections.values()):
        return
    was_training = student.training
    try:
        with torch.no_grad(), kept_buffers(student):
            student.train()
            student(inputs)
            features = teacher(inputs).features
            for index, pair in enumerate(config.feature_pairs):
                projection = projections[f"pair{index}"]
                assert isinstance(projection, FeatureProjector)
                fit_projection(projection, student_capture[pair.student],
                               features[pair.teacher])
    finally:
        student.train(was_training)
        student_capture.clear()
