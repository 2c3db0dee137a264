"""Distillation as a loss function for the one training loop (``studio.core.train.loop.train``).

``make_kd_loss`` wires teachers, hooks and projections into a ``(model, inputs, labels) -> loss``
callable; the loop stays the only place where optimisation happens.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from studio.core.errors import StudioError
from studio.core.methods.distill.features import FeatureCapture
from studio.core.methods.distill.losses import (
    distillation_loss,
    feature_kd_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    soft_targets,
)
from studio.core.methods.distill.projection import FeatureProjector
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
    seed: int = 0
    """Seeds the projections' initial weights, so a run is reproducible."""

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
        if self.relation_layers is not None and len(self.relation_layers) != 2:
            problems.append("relation_layers must be (student_layer, teacher_layer)")
        if problems:
            raise StudioError("distillation settings: " + "; ".join(problems))

    @property
    def uses_relation(self) -> bool:
        return self.relation_weight > 0 or self.relation_angle_weight > 0


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a teacher must never change, batch-norm statistics included."""
    model.eval()
    model.requires_grad_(False)
    return model


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


def _check_separate(student: nn.Module, teachers: Sequence[nn.Module]) -> None:
    own = {id(p) for p in student.parameters()}
    for index, teacher in enumerate(teachers):
        if teacher is student or any(id(p) in own for p in teacher.parameters()):
            raise StudioError(
                f"teacher {index} shares weights with the student, so freezing it would freeze "
                "the student; take default_teacher(model) before compressing the model")


class KDLoss:
    """The distillation loss; call it as ``loss(student, inputs, labels)``.

    ``last`` holds each term of the latest call (detached), for logging without recomputing.
    """

    def __init__(self, student: nn.Module, teachers: Sequence[nn.Module], config: KDConfig,
                 projections: nn.ModuleDict, student_capture: FeatureCapture,
                 teacher_capture: FeatureCapture) -> None:
        self.student = student
        self.teachers = list(teachers)
        self.config = config
        self.projections = projections
        self._student_capture = student_capture
        self._teacher_capture = teacher_capture
        self.last: dict[str, Tensor] = {}
        self._closed = False

    def __call__(self, model: nn.Module, inputs: Tensor, labels: Tensor | None = None) -> Tensor:
        if self._closed:
            raise StudioError("this distillation loss was closed; build a new one")
        if model is not self.student:
            raise StudioError("the KD loss was built for another model; pass the student given "
                              "to make_kd_loss (its hooks and projections belong to it)")
        cfg = self.config
        self._student_capture.clear()
        self._teacher_capture.clear()
        with torch.no_grad():
            teacher_logits = []
            for teacher in self.teachers:
                teacher.eval()  # a parent's .train() must not switch batch norm to batch stats
                teacher_logits.append(_logits(teacher(inputs), "teacher"))
        student_logits = _logits(model(inputs), "student")
        parts: dict[str, Tensor] = {}
        total = student_logits.new_zeros((), dtype=torch.float32)
        if cfg.logit_weight > 0:
            probs = soft_targets(teacher_logits, cfg.temperature, cfg.teacher_weights)
            parts["logit"] = distillation_loss(student_logits, probs, labels, cfg.temperature,
                                               cfg.alpha)
            total = total + cfg.logit_weight * parts["logit"]
        for index, pair in enumerate(cfg.feature_pairs):
            term = feature_kd_loss(self._student_capture[pair.student],
                                   self._teacher_capture[pair.teacher],
                                   self.projections[f"pair{index}"])
            parts[f"feature/{pair.student}"] = term
            total = total + pair.weight * term
        if cfg.uses_relation:
            if cfg.relation_layers is None:
                s_emb, t_emb = student_logits, teacher_logits[0]
            else:
                s_emb = self._student_capture[cfg.relation_layers[0]]
                t_emb = self._teacher_capture[cfg.relation_layers[1]]
            if cfg.relation_weight > 0:
                parts["relation"] = rkd_distance_loss(s_emb, t_emb)
                total = total + cfg.relation_weight * parts["relation"]
            if cfg.relation_angle_weight > 0:
                parts["relation_angle"] = rkd_angle_loss(s_emb, t_emb)
                total = total + cfg.relation_angle_weight * parts["relation_angle"]
        self._teacher_capture.clear()  # the student's stay alive through backward anyway
        self.last = {name: value.detach() for name, value in parts.items()}
        return total

    def close(self) -> None:
        """Remove every hook from student and teacher; safe to call twice."""
        self._student_capture.close()
        self._teacher_capture.close()
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


def make_kd_loss(student: nn.Module, teachers: nn.Module | Sequence[nn.Module],
                 config: KDConfig, example_inputs: Tensor) -> KDSetup:
    """Build the KD loss for ``student``: freeze the teachers, hook the chosen layers, and size
    the projections from one example forward through both.

    Build it after the student has its final shape (after structured pruning): projections are
    sized from the student's current widths. Teachers are moved to ``example_inputs``' device.
    Pass ``training_parameters(student, extra_parameters)`` as ``train(parameters=...)`` so the
    projections learn too, and call ``close()`` when done (a ``finally`` block) to remove hooks.
    """
    teacher_list = [teachers] if isinstance(teachers, nn.Module) else list(teachers)
    if not teacher_list:
        raise StudioError("distillation needs at least one teacher")
    if config.teacher_weights is not None and len(config.teacher_weights) != len(teacher_list):
        raise StudioError(f"{len(config.teacher_weights)} teacher weights given for "
                          f"{len(teacher_list)} teachers")
    _check_separate(student, teacher_list)
    device = example_inputs.device
    for teacher in teacher_list:
        freeze(teacher).to(device)
    student_names = [p.student for p in config.feature_pairs]
    teacher_names = [p.teacher for p in config.feature_pairs]
    if config.uses_relation and config.relation_layers is not None:
        student_names.append(config.relation_layers[0])
        teacher_names.append(config.relation_layers[1])
    student_capture = FeatureCapture(student, student_names, "student")
    try:
        teacher_capture = FeatureCapture(teacher_list[0], teacher_names, "teacher")
    except BaseException:
        student_capture.close()
        raise
    try:
        projections = _build_projections(student, teacher_list[0], config, example_inputs,
                                         student_capture, teacher_capture)
    except BaseException:
        student_capture.close()
        teacher_capture.close()
        raise
    loss = KDLoss(student, teacher_list, config, projections, student_capture, teacher_capture)
    return KDSetup(loss, list(projections.parameters()), loss.close)


def _build_projections(student: nn.Module, teacher: nn.Module, config: KDConfig,
                       example_inputs: Tensor, student_capture: FeatureCapture,
                       teacher_capture: FeatureCapture) -> nn.ModuleDict:
    projections = nn.ModuleDict()
    if not config.feature_pairs:
        return projections
    was_training = student.training
    student.eval()  # the probe must not move the student's batch-norm statistics
    try:
        with torch.no_grad():
            student(example_inputs)
            teacher(example_inputs)
    finally:
        student.train(was_training)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for index, pair in enumerate(config.feature_pairs):
            s_feat, t_feat = student_capture[pair.student], teacher_capture[pair.teacher]
            projection = FeatureProjector(tuple(s_feat.shape), tuple(t_feat.shape))
            projections[f"pair{index}"] = projection.to(device=s_feat.device, dtype=s_feat.dtype)
    student_capture.clear()
    teacher_capture.clear()
    return projections
